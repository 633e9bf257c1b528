import { Command, type Option } from 'commander';
import { EXIT, cliError } from './client.js';
import type { Io } from './vm.js';

/**
 * Examples shown after each command's --help, by command path (`vm create`; the root is '').
 * Every command of the tree has an entry: a test walks the tree and names any without one.
 */
export const EXAMPLES: Readonly<Record<string, readonly string[]>> = {
  '': [
    'matchlock vm list                                   # the MicroVMs of the local matchlockd',
    'matchlock --host 192.168.10.3:9090 --insecure --token "$TOKEN" vm list   # a remote flintlockd or matchlockd',
    'matchlock inspect                                   # check this host',
    'source <(matchlock completion bash)                 # shell completion',
  ],
  vm: ['matchlock vm create -f spec.yaml', 'matchlock vm list -o yaml', 'matchlock vm watch UID --until CREATED --timeout 2m'],
  'vm create': [
    'matchlock vm create -f spec.yaml                    # a MicroVMSpec in YAML or JSON',
    'matchlock vm create --name web1 --kernel-image ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77 \\\n    --root-image ghcr.io/liquidmetal-dev/capmvm-k8s-os:1.23.5 --interface id=eth1,type=macvtap',
    'matchlock vm create -f spec.yaml --metadata-from-file user-data=./user-data.yaml --label role=worker',
  ],
  'vm get': ['matchlock vm get 01HZY3NDEKTSV4RRFFQ69G5FAV', 'matchlock vm get 01HZY3NDEKTSV4RRFFQ69G5FAV -o yaml'],
  'vm list': ['matchlock vm list', 'matchlock vm list --namespace ns1 --name web1', 'matchlock vm list -o json'],
  'vm delete': ['matchlock vm delete 01HZY3NDEKTSV4RRFFQ69G5FAV', 'matchlock vm delete UID1 UID2'],
  'vm describe': ['matchlock vm describe 01HZY3NDEKTSV4RRFFQ69G5FAV', 'matchlock vm describe ns1/web1 --leases-file /var/lib/misc/dnsmasq.leases'],
  'vm logs': ['matchlock vm logs UID --tail 50', 'matchlock vm logs ns1/web1 -f        # follow until Ctrl-C'],
  'vm console': ['matchlock vm console UID                  # Ctrl-] detaches', 'matchlock vm console UID < cmds.txt       # detaches 0.5s after the input ends (--eof-timeout)'],
  'vm stop': ['matchlock vm stop UID                     # ACPI power-down, then the VMM after the grace period', 'matchlock vm stop ns1/web1 --force --no-wait'],
  'vm start': ['matchlock vm start UID', 'matchlock vm start ns1/web1 --timeout 2m'],
  'vm restart': ['matchlock vm restart UID --grace 30s'],
  'vm pause': ['matchlock vm pause UID'],
  'vm resume': ['matchlock vm resume UID'],
  'vm events': ['matchlock vm events                       # every change, resumed after a daemon restart', 'matchlock vm events --namespace ns1 -o json', 'matchlock vm events --after-id 1200 --max-events 10'],
  version: ['matchlock version', 'matchlock --host 192.168.10.3:9090 --insecure version -o json'],
  'vm watch': ['matchlock vm watch UID --until CREATED --timeout 2m   # exit 7 on timeout, 8 when it fails or vanishes'],
  image: ['matchlock image pull ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77', 'matchlock image ls', 'matchlock image prune --grace 1h'],
  'image pull': [
    'matchlock image pull ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77',
    'matchlock image pull --config /etc/opt/flintlockd/config.yaml localhost:5000/guest:1',
    'matchlock image pull --state-dir /srv/matchlock --init alpine   # a host whose daemon has not run yet',
  ],
  'image import': ['matchlock image import ./layout --name localhost/my/guest:1', 'matchlock image import ./guest.tar'],
  'image ls': ['matchlock image ls', 'matchlock image ls -o json'],
  'image rm': ['matchlock image rm localhost/my/guest:1'],
  'image prune': ['matchlock image prune', 'matchlock image prune --grace 1h'],
  hub: ['matchlock hub setup --mode bridge --interface mlbr0 --uplink eth0 --dhcp dnsmasq', 'matchlock hub status', 'matchlock hub teardown'],
  'hub setup': [
    'matchlock hub setup --mode vlan --parent bond0 --vlan-id 1000 --interface bond0.1000 --uplink eth0',
    'matchlock hub setup --mode bridge --interface mlbr0 --uplink eth0 --dhcp dnsmasq',
    'matchlock hub setup -f hub.yaml',
  ],
  'hub teardown': ['matchlock hub teardown                # what setup recorded'],
  'hub status': ['matchlock hub status', 'matchlock hub status -o json'],
  'hub leases': ['matchlock hub leases', 'matchlock --host unix:/run/matchlock.sock hub leases -o json'],
  host: ['matchlock host setup --set bridge-name=br0', 'matchlock host dev'],
  'host setup': [
    'matchlock host setup --set bridge-name=br0 --set default-provider=qemu',
    'matchlock host setup --set parent-iface=bond0.1000    # merged into the existing config, shown as a diff',
    'matchlock host setup --daemon-bin /usr/local/bin/matchlockd --no-guard',
  ],
  'host dev': ['matchlock host dev', 'matchlock host dev --uplink eth0 --dhcp dnsmasq', 'matchlock host dev --down'],
  inspect: [
    'matchlock inspect',
    'matchlock --token "$TOKEN" inspect --hub         # the hub hub setup recorded too',
    'matchlock --tls-ca ca.pem inspect -o json',
    'matchlock inspect --hub-only                     # a machine running only the hub',
  ],
  completion: ['source <(matchlock completion bash)', 'matchlock completion zsh > "${fpath[1]}/_matchlock"', 'matchlock completion fish > ~/.config/fish/completions/matchlock.fish'],
};

/** `vm create` for a command, '' for the root. */
export function commandPath(c: Command): string {
  const names: string[] = [];
  for (let at: Command | null = c; at?.parent; at = at.parent) names.unshift(at.name());
  return names.join(' ');
}

/** Every command under `root`, root first, depth first. */
export function walk(root: Command): Command[] {
  return [root, ...root.commands.flatMap((c) => walk(c))];
}

/** Adds the Examples section to every command of the tree that has examples. */
export function addExamples(root: Command): void {
  for (const c of walk(root)) {
    const lines = EXAMPLES[commandPath(c)];
    if (lines?.length) c.addHelpText('after', `\nExamples:\n${lines.map((l) => `  $ ${l}`).join('\n')}\n`);
  }
}

const longFlags = (opts: readonly Option[]) => opts.flatMap((o) => [o.long, o.short]).filter((f): f is string => !!f);
/** The options taken at a command: its own and its parents' below the root (the root's come first). */
const optionsAt = (c: Command): readonly Option[] => (c.parent?.parent ? [...optionsAt(c.parent), ...c.options] : c.options);
const words = (c: Command) => ({
  subs: c.commands.flatMap((s) => [s.name(), ...s.aliases()]),
  opts: [...new Set([...longFlags(optionsAt(c)), '--help'])],
});

/**
 * A completion script for bash, zsh or fish, generated from the command tree: at each level the
 * subcommands (and their aliases) and the options of the command reached so far. Values are
 * not completed (files are, by the shell, where it falls back to them).
 */
export function completionScript(root: Command, shell: 'bash' | 'zsh' | 'fish'): string {
  const name = root.name();
  const fn = `_${name.replace(/\W/g, '_')}`;
  const all = walk(root);
  if (shell === 'fish') {
    const lines = [`# fish completion for ${name}, generated by \`${name} completion fish\``, `complete -c ${name} -f`];
    for (const c of all) {
      const path = commandPath(c).split(' ').filter(Boolean);
      const { subs } = words(c);
      // At this level: every word of the path seen, and none of this level's subcommands yet.
      const at = path.length === 0 ? '__fish_use_subcommand' : `__fish_seen_subcommand_from ${path.at(-1)}${subs.length ? `; and not __fish_seen_subcommand_from ${subs.join(' ')}` : ''}`;
      for (const s of c.commands) lines.push(`complete -c ${name} -n '${at}' -a '${s.name()}' -d ${JSON.stringify(s.description())}`);
      for (const o of c.options) if (o.long) lines.push(`complete -c ${name} -n '${at}' -l ${o.long.slice(2)}${o.short ? ` -s ${o.short.slice(1)}` : ''}${o.required || o.optional ? ' -r' : ''} -d ${JSON.stringify(o.description)}`);
    }
    return lines.join('\n') + '\n';
  }
  const quote = (xs: string[]) => `'${xs.join(' ')}'`;
  // Every spelling of a command's path, aliases included (`image list` is `image ls`).
  const spellings = (c: Command): string[] => {
    if (!c.parent) return [''];
    return spellings(c.parent).flatMap((p) => [c.name(), ...c.aliases()].map((n) => (p ? `${p} ${n}` : n)));
  };
  const pattern = (c: Command) => spellings(c).map((p) => JSON.stringify(p)).join('|');
  const subsCase = all.map((c) => `    ${pattern(c)}) echo ${quote(words(c).subs)} ;;`).join('\n');
  const optsCase = all.map((c) => `    ${pattern(c)}) echo ${quote(words(c).opts)} ;;`).join('\n');
  const bash = `# bash completion for ${name}, generated by \`${name} completion bash\`
${fn}_subs() {
  case "$1" in
${subsCase}
  esac
}
${fn}_opts() {
  case "$1" in
${optsCase}
  esac
}
${fn}() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" path="" w i
  # The command reached so far: each word that is a subcommand of the path before it.
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    [[ "$w" == -* ]] && continue
    [[ " $(${fn}_subs "$path") " == *" $w "* ]] && path="\${path:+$path }$w"
  done
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(${fn}_opts "$path")" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$(${fn}_subs "$path")" -- "$cur"))
    [[ \${#COMPREPLY[@]} -eq 0 ]] && COMPREPLY=($(compgen -f -- "$cur"))
  fi
}
complete -F ${fn} ${name}
`;
  if (shell === 'bash') return bash;
  // zsh runs the same function through its bash completion layer.
  return `#compdef ${name}\nautoload -U +X bashcompinit && bashcompinit\n${bash}`;
}

/** `matchlock completion bash|zsh|fish`: prints the script for that shell. */
export function completionCommand(root: Command, io: Io): Command {
  return new Command('completion')
    .description('print a shell completion script (bash, zsh or fish)')
    .argument('<shell>', 'bash, zsh or fish')
    .action((shell: string) => {
      if (shell !== 'bash' && shell !== 'zsh' && shell !== 'fish') throw cliError(`completion ${shell}: must be bash, zsh or fish`, EXIT.usage);
      io.out(completionScript(root, shell));
    });
}
