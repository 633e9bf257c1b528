import { subnetOf, type HubConfig } from './config.js';

/** isc-dhcp-server's dhcpd.conf for the hub, in the form the seed environment uses. */
export function dhcpdConf(c: HubConfig): string {
  const s = subnetOf(c.address);
  return [
    '# Written by matchlock hub setup; changes are overwritten.',
    `default-lease-time ${c.defaultLeaseSeconds};`,
    `max-lease-time ${c.maxLeaseSeconds};`,
    'authoritative;',
    '',
    `subnet ${s.network} netmask ${s.netmask} {`,
    `  range ${c.rangeStart} ${c.rangeEnd};`,
    `  option routers ${s.hub};`,
    ...(c.dnsServers.length ? [`  option domain-name-servers ${c.dnsServers.join(', ')};`] : []),
    '}',
    '',
  ].join('\n');
}

/** dnsmasq as a DHCP-only server on the hub interface (port 0: no DNS). */
export function dnsmasqArgs(c: HubConfig, leaseFile: string, pidFile: string): string[] {
  const s = subnetOf(c.address);
  return [
    '--keep-in-foreground', '--conf-file=/dev/null', '--port=0', `--interface=${c.interface}`, '--bind-interfaces',
    `--dhcp-range=${c.rangeStart},${c.rangeEnd},${s.netmask},${c.defaultLeaseSeconds}s`,
    `--dhcp-option=option:router,${s.hub}`,
    ...(c.dnsServers.length ? [`--dhcp-option=option:dns-server,${c.dnsServers.join(',')}`] : []),
    `--dhcp-leasefile=${leaseFile}`, `--pid-file=${pidFile}`, '--dhcp-authoritative', '--no-ping',
  ];
}

export const NFT_TABLE = 'matchlock_hub';

/**
 * NAT from the LAN to the uplink: masquerade out; from the uplink into the LAN only what
 * belongs to connections already made (new connections from outside dropped). Only the hub's
 * own traffic is filtered and the chain's policy is accept: a drop in any base chain at a hook
 * drops the packet whatever other tables accept (nft(8), "Base chain" verdicts), so a policy
 * drop here would cut all other forwarding on the host (docker0, CNI, a VPN subnet router), and
 * with br_netfilter (net.bridge.bridge-nf-call-iptables=1) the guests' frames between each
 * other on the hub's own bridge too.
 */
export function nftRuleset(c: HubConfig): string {
  const s = subnetOf(c.address);
  return [
    `table ip ${NFT_TABLE} {`,
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    ip saddr ${s.network}/${s.prefix} oifname "${c.uplink}" masquerade`,
    '  }',
    '  chain forward {',
    '    type filter hook forward priority filter; policy accept;',
    `    iifname "${c.interface}" oifname "${c.uplink}" accept`,
    `    iifname "${c.uplink}" oifname "${c.interface}" ct state established,related accept`,
    `    iifname "${c.uplink}" oifname "${c.interface}" drop`,
    '  }',
    '}',
    '',
  ].join('\n');
}
