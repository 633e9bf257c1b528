import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync, truncateSync, mkdirSync } from 'node:fs';
import { connect } from 'node:net';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { unixHttp } from '../../src/adapters/vmm/unix-http.js';
import { tempDir } from '../helpers/daemon.js';
import { FAKE_FIRECRACKER, firecrackerLabMissing, writeBzImage, writeElfKernel } from '../helpers/firecracker.js';

const missing = firecrackerLabMissing();
const skip = missing && !process.env.CI ? missing : false;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Run {
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  exited: Promise<void>;
  stderr: () => string;
  stdout: () => string;
}

describe('firecracker stand-in', { skip }, () => {
  let ns: string;
  let tmp: { path: string; remove(): void };
  let dir: string;
  const running: Run[] = [];
  let n = 0;

  before(() => {
    assert.equal(missing, undefined, `the stand-in tests ${missing}`);
    ns = `mlf-${randomBytes(3).toString('hex')}`;
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'tap0', 'mode', 'tap']);
    execFileSync('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'tap1', 'mode', 'tap']);
    execFileSync('ip', ['-n', ns, 'tuntap', 'add', 'dev', 'tun0', 'mode', 'tun']);
    execFileSync('ip', ['-n', ns, 'link', 'add', 'br0', 'type', 'bridge']);
    tmp = tempDir('fc-standin');
    dir = tmp.path;
    writeElfKernel(join(dir, 'vmlinux'));
    writeBzImage(join(dir, 'bzImage'));
    for (const f of ['root.img', 'data.img']) {
      writeFileSync(join(dir, f), '');
      truncateSync(join(dir, f), 1 << 20);
    }
    writeFileSync(join(dir, 'metadata.json'), JSON.stringify({ latest: { 'meta-data': 'instance_id: i-1\n', 'user-data': '#cloud-config\n', nested: { a: 'b', deeper: {} }, count: 3 } }));
  });
  after(() => {
    for (const r of running) if (r.code === null && r.signal === null) process.kill(r.pid, 'SIGKILL');
    if (ns) spawnSync('ip', ['netns', 'del', ns]);
    tmp?.remove();
  });

  /** A valid config for the fixtures; each case breaks one rule of it. */
  function config(sub: string): Record<string, unknown> {
    mkdirSync(join(dir, sub), { recursive: true });
    return {
      'boot-source': { kernel_image_path: join(dir, 'vmlinux'), boot_args: 'console=ttyS0 reboot=k panic=1' },
      drives: [
        { drive_id: 'root', path_on_host: join(dir, 'root.img'), is_root_device: true, is_read_only: false, cache_type: 'Unsafe' },
        { drive_id: 'data', path_on_host: join(dir, 'data.img'), is_root_device: false, is_read_only: true },
      ],
      'machine-config': { vcpu_count: 2, mem_size_mib: 256, smt: false },
      'network-interfaces': [
        { iface_id: 'eth0', host_dev_name: 'tap0', guest_mac: 'AA:FF:00:00:00:01' },
        { iface_id: 'eth1', host_dev_name: 'tap1', guest_mac: '02:00:00:00:00:02' },
      ],
      logger: { log_path: join(dir, sub, 'fc.log'), level: 'Info', show_level: true },
      metrics: { metrics_path: join(dir, sub, 'fc.metrics') },
      'mmds-config': { version: 'V1', network_interfaces: ['eth0'] },
      vsock: { guest_cid: 3, uds_path: join(dir, sub, 'v.sock') },
    };
  }

  function start(args: string[], env: Record<string, string> = {}): Run {
    const child = spawn('ip', ['netns', 'exec', ns, FAKE_FIRECRACKER, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const run: Run = {
      pid: child.pid ?? 0,
      code: null,
      signal: null,
      exited: new Promise((resolve) => child.once('exit', (code, signal) => { run.code = code; run.signal = signal; resolve(); })),
      stderr: () => err,
      stdout: () => out,
    };
    running.push(run);
    return run;
  }

  /** Starts with a config file; resolves once it exited or its API answers. */
  async function boot(cfg: unknown, sub: string, extra: string[] = [], env: Record<string, string> = {}) {
    const cfgPath = join(dir, sub, 'fc.cfg');
    writeFileSync(cfgPath, typeof cfg === 'string' ? cfg : JSON.stringify(cfg));
    const sock = join(dir, sub, 'api.sock');
    const run = start(['--id', `vm-${sub}`, '--config-file', cfgPath, '--metadata', join(dir, 'metadata.json'), '--api-sock', sock, ...extra], env);
    for (let i = 0; i < 300 && run.code === null && run.signal === null; i++) {
      const up = await unixHttp(sock, 'GET', '/', undefined, 500).then((r) => r.status === 200, () => false);
      if (up) break;
      await sleep(100);
    }
    const log = () => (existsSync(join(dir, sub, 'fc.log')) ? readFileSync(join(dir, sub, 'fc.log'), 'utf8') : '');
    return { run, sock, log };
  }

  it('boots a valid config: API up, success line, first metrics line, vsock answering CONNECT', async () => {
    const sub = `ok${n++}`;
    const { run, sock, log } = await boot(config(sub), sub);
    assert.equal(run.code, null, run.stderr());
    const info = await unixHttp(sock, 'GET', '/');
    assert.deepEqual(info.body, { id: `vm-${sub}`, state: 'Running', vmm_version: '1.16.1', app_name: 'Firecracker' });
    assert.match(log(), /Successfully started microvm that was configured from one single json/);
    const metrics = readFileSync(join(dir, sub, 'fc.metrics'), 'utf8').trim().split('\n');
    assert.equal(metrics.length, 1);
    assert.ok(JSON.parse(metrics[0]!).utc_timestamp_ms > 0);
    // Host-initiated vsock: CONNECT <port> on uds_path answers OK <host port>.
    const answer = await new Promise<string>((resolve, reject) => {
      const c = connect(join(dir, sub, 'v.sock'), () => c.write('CONNECT 52\n'));
      c.once('data', (d) => { resolve(d.toString()); c.destroy(); });
      c.once('error', reject);
    });
    assert.match(answer, /^OK \d+\n$/);
    process.kill(run.pid, 'SIGKILL');
    await run.exited;
  });

  // Each case breaks one rule; the stand-in must exit 1 with Firecracker's error naming the field.
  // The cases reach into arbitrary JSON on purpose, so the config is untyped here.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const CASES: [string, (c: Record<string, any>, sub: string) => unknown, RegExp][] = [
    ['not JSON', () => '{"boot-source": ', /Invalid JSON/],
    ['boot-source missing', (c) => { delete c['boot-source']; }, /missing field `boot-source`/],
    ['drives missing', (c) => { delete c.drives; }, /missing field `drives`/],
    ['unknown field in a drive', (c) => { c.drives[0].cache = 'x'; }, /drives\[0\]: unknown field `cache`/],
    ['unknown field in machine-config', (c) => { c['machine-config'].cpus = 2; }, /machine-config: unknown field `cpus`/],
    ['cache_type spelled WriteBack', (c) => { c.drives[0].cache_type = 'WriteBack'; }, /drives\[0\]\.cache_type: unknown variant/],
    ['is_root_device missing', (c) => { delete c.drives[1].is_root_device; }, /drives\[1\]: missing field `is_root_device`/],
    ['vcpu_count a string', (c) => { c['machine-config'].vcpu_count = '2'; }, /machine-config\.vcpu_count: invalid type/],
    ['vcpu_count above 32', (c) => { c['machine-config'].vcpu_count = 33; }, /machine-config\.vcpu_count/],
    ['odd vcpu_count with smt', (c) => { c['machine-config'].vcpu_count = 3; c['machine-config'].smt = true; }, /machine-config\.vcpu_count: The vCPU number is invalid/],
    ['mem_size_mib 0', (c) => { c['machine-config'].mem_size_mib = 0; }, /machine-config\.mem_size_mib: The memory size \(MiB\) is invalid/],
    ['kernel missing', (c) => { c['boot-source'].kernel_image_path = join(dir, 'nope'); }, /boot-source\.kernel_image_path: The kernel file cannot be opened: No such file/],
    ['kernel is a bzImage', (c) => { c['boot-source'].kernel_image_path = join(dir, 'bzImage'); }, /boot-source\.kernel_image_path: .*failed to load ELF kernel image/],
    ['initrd missing', (c) => { c['boot-source'].initrd_path = join(dir, 'nope'); }, /boot-source\.initrd_path: The initrd file cannot be opened/],
    ['two root drives', (c) => { c.drives[1].is_root_device = true; }, /drives\[1\]\.is_root_device: A root block device already exists/],
    ['repeated drive_id', (c) => { c.drives[1].drive_id = 'root'; }, /drives\[1\]\.drive_id: drive id root is used twice/],
    ['drive file missing', (c) => { c.drives[1].path_on_host = join(dir, 'nope.img'); }, /drives\[1\]\.path_on_host: Unable to create the virtio block device data/],
    ['drive without is_read_only', (c) => { delete c.drives[1].is_read_only; }, /drives\[1\]\.is_read_only: missing field/],
    ['drive not writable', (c, sub) => { const p = join(dir, sub, 'immutable.img'); writeFileSync(p, ''); execFileSync('chattr', ['+i', p]); c.drives[0].path_on_host = p; }, /drives\[0\]\.path_on_host: .*(Permission denied|Operation not permitted)/],
    ['repeated iface_id', (c) => { c['network-interfaces'][1].iface_id = 'eth0'; }, /network-interfaces\[1\]\.iface_id: interface id eth0 is used twice/],
    ['bad guest_mac', (c) => { c['network-interfaces'][1].guest_mac = '02:00:00:00:00'; }, /network-interfaces\[1\]\.guest_mac: invalid MAC/],
    ['TAP missing', (c) => { c['network-interfaces'][1].host_dev_name = 'tap9'; }, /network-interfaces\[1\]\.host_dev_name: .*no such device/],
    ['host device is a bridge', (c) => { c['network-interfaces'][1].host_dev_name = 'br0'; }, /network-interfaces\[1\]\.host_dev_name: .*br0 is a bridge device, not a TAP/],
    ['host device is a TUN', (c) => { c['network-interfaces'][1].host_dev_name = 'tun0'; }, /network-interfaces\[1\]\.host_dev_name: .*tun0 is a tun device, not a TAP/],
    ['host device name too long', (c) => { c['network-interfaces'][1].host_dev_name = 'x'.repeat(16); }, /network-interfaces\[1\]\.host_dev_name: .*Invalid TAP name/],
    ['mmds-config with no interfaces', (c) => { c['mmds-config'].network_interfaces = []; }, /mmds-config\.network_interfaces: The list of network interface IDs that allow forwarding MMDS requests is empty/],
    ['mmds-config without network_interfaces', (c) => { delete c['mmds-config'].network_interfaces; }, /mmds-config: missing field `network_interfaces`/],
    ['mmds-config naming an unknown interface', (c) => { c['mmds-config'].network_interfaces = ['eth7']; }, /mmds-config\.network_interfaces: .*does not correspond to any existing network interface \(eth7\)/],
    ['mmds ipv4_address not link-local', (c) => { c['mmds-config'].ipv4_address = '10.0.0.1'; }, /mmds-config\.ipv4_address: must match format/],
    ['vsock guest_cid 2', (c) => { c.vsock.guest_cid = 2; }, /vsock\.guest_cid: must be >= 3/],
    ['vsock socket exists', (c, sub) => { writeFileSync(join(dir, sub, 'v.sock'), ''); }, /vsock\.uds_path: .*Address in use/],
    ['logger level Off as YAML 1.1 would read it', (c) => { c.logger.level = false; }, /logger\.level: invalid type/],
    ['log directory missing', (c) => { c.logger.log_path = join(dir, 'no-dir', 'fc.log'); }, /logger\.log_path: Failed to open target file/],
    // Cmdline::try_from(boot_args, 2048): 2047 characters and the NUL at most.
    ['boot_args of 2048 bytes', (c) => { c['boot-source'].boot_args = `x=${'y'.repeat(2046)}`; }, /boot-source\.boot_args: The kernel command line is invalid: Invalid cmdline capacity provided\./],
    // 1848 bytes fit, but with pci=off, root=/dev/vda rw and five virtio_mmio.device= entries (200) the line and its NUL are 2049.
    ['boot_args that pci=off, root= and virtio_mmio.device= push over 2048', (c) => { c['boot-source'].boot_args = `x=${'y'.repeat(1846)}`; }, /Inserting string would make command line too long\./],
    // GSIs 5 to 23: five devices plus 13 drives leave none for VMClock; plus 15, none for the 20th device.
    ['18 virtio devices: no interrupt line left for VMClock', (c) => { for (let i = 0; i < 13; i++) c.drives.push({ drive_id: `d${i}`, path_on_host: join(dir, 'data.img'), is_root_device: false, is_read_only: true }); }, /VMClock: Could not allocate GSI: The requested resource is not available\./],
    ['20 virtio devices: none for the 20th', (c) => { for (let i = 0; i < 15; i++) c.drives.push({ drive_id: `d${i}`, path_on_host: join(dir, 'data.img'), is_root_device: false, is_read_only: true }); }, /vsock: Could not attach device: MMIO transport error: Failed to allocate requested resource: The requested resource is not available\./],
  ];

  it('writes its log and metrics files from offset 0, neither appending nor truncating: an older file\'s tail is left behind', async () => {
    const sub = `reuse${n++}`;
    const cfg = config(sub);
    const old = `${'x'.repeat(199)}\n`.repeat(40);
    writeFileSync(join(dir, sub, 'fc.log'), old);
    writeFileSync(join(dir, sub, 'fc.metrics'), old);
    const { run } = await boot(cfg, sub);
    assert.equal(run.code, null, run.stderr());
    for (const f of ['fc.log', 'fc.metrics']) {
      const text = readFileSync(join(dir, sub, f), 'utf8');
      assert.equal(text.length, old.length, `${f}: not truncated, not appended to`);
      assert.notEqual(text.slice(0, 200), old.slice(0, 200), `${f}: written over from offset 0`);
      assert.ok(text.endsWith(old.slice(-400)), `${f}: the older bytes past the new ones stay`);
    }
    process.kill(run.pid, 'SIGKILL');
    await run.exited;
  });

  it(`refuses ${CASES.length} configs, each with one rule broken, exit 1 and an error naming the field`, async () => {
    const results: string[] = [];
    for (let i = 0; i < CASES.length; i += 4) {
      await Promise.all(CASES.slice(i, i + 4).map(async ([name, breakIt, expected]) => {
        const sub = `bad${n++}`;
        const c = config(sub);
        const replaced = breakIt(c, sub);
        const { run, sock, log } = await boot(replaced ?? c, sub);
        await Promise.race([run.exited, sleep(5000)]);
        if (run.code === null && run.signal === null) process.kill(run.pid, 'SIGKILL');
        const output = `${run.stderr()}\n${run.stdout()}\n${log()}`;
        spawnSync('chattr', ['-i', join(dir, sub, 'immutable.img')]);
        if (run.code !== 1) results.push(`${name}: exit ${run.code} ${run.signal ?? ''}, expected 1`);
        else if (!expected.test(output)) results.push(`${name}: output does not match ${expected}: ${output}`);
        else if (!/Firecracker exiting with error\. exit_code=1/.test(output)) results.push(`${name}: no exit line`);
        // Firecracker leaves its API socket behind on exit; the daemon has to remove it.
        else if (!existsSync(sock)) results.push(`${name}: the API socket was removed`);
      }));
    }
    assert.deepEqual(results, []);
  });

  it('boots 17 virtio devices, a 2047-byte final command line and non-ASCII boot_args (try_from checks only the length)', async () => {
    for (const breakIt of [
      (c: Record<string, any>) => { for (let i = 0; i < 12; i++) c.drives.push({ drive_id: `d${i}`, path_on_host: join(dir, 'data.img'), is_root_device: false, is_read_only: true }); }, // eslint-disable-line @typescript-eslint/no-explicit-any
      // 1847 + " pci=off" (8) + " root=/dev/vda rw" (17) + five " virtio_mmio.device=4K@0x…:N" (5 * 35) = 2047, and the NUL.
      (c: Record<string, any>) => { c['boot-source'].boot_args = `x=${'y'.repeat(1845)}`; }, // eslint-disable-line @typescript-eslint/no-explicit-any
      (c: Record<string, any>) => { c['boot-source'].boot_args = 'console=ttyS0 hostname_label=café'; }, // eslint-disable-line @typescript-eslint/no-explicit-any
    ]) {
      const sub = `edge${n++}`;
      const c = config(sub);
      breakIt(c);
      const { run } = await boot(c, sub);
      assert.equal(run.code, null, run.stderr() + run.stdout());
      process.kill(run.pid, 'SIGKILL');
      await run.exited;
    }
  });

  it('writes only the lines at or above the logger level the config sets', async () => {
    for (const [level, debug] of [['Info', false], ['Debug', true]] as const) {
      const sub = `level${n++}`;
      const c = config(sub);
      (c.logger as Record<string, unknown>).level = level;
      const { run, sock, log } = await boot(c, sub);
      assert.equal(run.code, null, run.stderr());
      await unixHttp(sock, 'GET', '/');
      assert.equal(/:DEBUG\]/.test(log()), debug, `${level}: ${log()}`);
      assert.match(log(), /:INFO\] Successfully started microvm/);
      process.kill(run.pid, 'SIGKILL');
      await run.exited;
    }
  });

  it('refuses metadata over the MMDS limit: 51200 bytes by default, --mmds-size-limit when given', async () => {
    const big = join(dir, 'big-metadata.json');
    writeFileSync(big, JSON.stringify({ latest: { 'user-data': 'u'.repeat(51200) } }));
    for (const [extra, refused] of [[[], true], [['--mmds-size-limit', '60000'], false]] as const) {
      const sub = `mmds${n++}`;
      const cfgPath = join(dir, sub, 'fc.cfg');
      writeFileSync(cfgPath, JSON.stringify(config(sub)));
      const run = start(['--config-file', cfgPath, '--metadata', big, '--api-sock', join(dir, sub, 'api.sock'), ...extra]);
      await Promise.race([run.exited, sleep(3000)]);
      if (refused) {
        assert.equal(run.code, 1);
        assert.match(run.stderr() + run.stdout(), /Failed to build MicroVM from Json: MMDS error: The MMDS data store size limit was exceeded\./);
      } else {
        assert.equal(run.code, null, run.stderr());
        process.kill(run.pid, 'SIGKILL');
        await run.exited;
      }
    }
  });

  it('refuses bad command lines with Firecracker exit codes', async () => {
    const cases: [string[], number | NodeJS.Signals][] = [
      [['--bogus'], 153],
      [['--no-api'], 153],
      [['--api-sock'], 153],
      [['--level', 'loud', '--api-sock', join(dir, 'x.sock')], 152],
      [['--id', 'bad_id!', '--api-sock', join(dir, 'y.sock')], 'SIGABRT'],
    ];
    for (const [args, expected] of cases) {
      const run = start(args);
      await run.exited;
      assert.equal(typeof expected === 'number' ? run.code : run.signal, expected, `${args.join(' ')}: ${run.stderr()}`);
    }
    const v = start(['--version']);
    await v.exited;
    assert.equal(v.code, 0);
    assert.match(v.stdout(), /^Firecracker v1\.16\.1\n/);
  });

  it('refuses an existing API socket path and metadata that is not JSON', async () => {
    const sub = `sock${n++}`;
    const c = config(sub);
    writeFileSync(join(dir, sub, 'api.sock'), '');
    const { run } = await boot(c, sub);
    await run.exited;
    assert.equal(run.code, 1);
    assert.match(run.stderr() + run.stdout(), /Failed to open the API socket at: .*api\.sock\. Check that it is not already used/);

    const sub2 = `md${n++}`;
    writeFileSync(join(dir, sub2 + '.json'), '{"latest":');
    const cfgPath = join(dir, `${sub2}.cfg`);
    writeFileSync(cfgPath, JSON.stringify(config(sub2)));
    const bad = start(['--config-file', cfgPath, '--metadata', join(dir, sub2 + '.json'), '--api-sock', join(dir, sub2, 'api.sock')]);
    await bad.exited;
    assert.equal(bad.signal, 'SIGABRT');
    assert.match(bad.stderr(), /MMDS error: metadata provided not valid json/);
  });

  it('API: state machine, fault_message errors, pause/resume, metrics flush, Ctrl+Alt+Del exits 0', async () => {
    const sub = `api${n++}`;
    const { run, sock } = await boot(config(sub), sub);
    const put = (path: string, body: unknown) => unixHttp(sock, 'PUT', path, body);
    assert.deepEqual((await put('/actions', { action_type: 'InstanceStart' })).body, { fault_message: 'The requested operation is not supported after starting the microVM.' });
    assert.equal((await put('/machine-config', { vcpu_count: 1, mem_size_mib: 128 })).status, 400);
    assert.deepEqual((await unixHttp(sock, 'PATCH', '/drives/root', { drive_id: 'data' })).body, { fault_message: 'The id from the path does not match the id from the body!' });
    assert.equal((await unixHttp(sock, 'PATCH', '/drives/root', { drive_id: 'root', path_on_host: join(dir, 'root.img') })).status, 204);
    assert.match(String((await unixHttp(sock, 'PATCH', '/vm', { state: 'Stopped' })).text), /unknown variant/);
    assert.equal((await unixHttp(sock, 'PATCH', '/vm', { state: 'Paused' })).status, 204);
    assert.equal(((await unixHttp(sock, 'GET', '/')).body as { state: string }).state, 'Paused');
    assert.equal((await unixHttp(sock, 'PATCH', '/vm', { state: 'Resumed' })).status, 204);
    assert.equal(((await unixHttp(sock, 'GET', '/')).body as { state: string }).state, 'Running');
    assert.match((await unixHttp(sock, 'GET', '/nope')).text, /Invalid request method and\/or path: GET \/nope/);
    assert.equal((await put('/actions', { action_type: 'FlushMetrics' })).status, 204);
    const lines = readFileSync(join(dir, sub, 'fc.metrics'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(lines.length, 2);
    // Deltas since the previous flush: only the requests made since boot.
    assert.equal(lines[1].patch_api_requests.vm_count, 3);
    // A chunked body is refused (micro_http reads bodies by Content-Length only).
    const chunked = await new Promise<number>((resolve, reject) => {
      const req = request({ socketPath: sock, method: 'PUT', path: '/actions', headers: { 'Transfer-Encoding': 'chunked' } }, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
      req.on('error', reject);
      req.end('{"action_type":"FlushMetrics"}');
    });
    assert.equal(chunked, 400);
    assert.equal((await put('/actions', { action_type: 'SendCtrlAltDel' })).status, 204);
    await run.exited;
    assert.equal(run.code, 0);
  });

  it('API mode without a config file: pre-boot PUTs, then InstanceStart validates like the file', async () => {
    const sub = `apimode${n++}`;
    const c = config(sub);
    const sock = join(dir, sub, 'api.sock');
    const run = start(['--api-sock', sock]);
    for (let i = 0; i < 300 && !existsSync(sock); i++) await sleep(100);
    const put = (path: string, body: unknown) => unixHttp(sock, 'PUT', path, body);
    assert.deepEqual((await put('/actions', { action_type: 'SendCtrlAltDel' })).body, { fault_message: 'The requested operation is not supported before starting the microVM.' });
    assert.equal((await put('/boot-source', c['boot-source'])).status, 204);
    assert.equal((await put('/machine-config', { vcpu_count: 3, mem_size_mib: 256, smt: true })).status, 204);
    assert.match((await put('/actions', { action_type: 'InstanceStart' })).text, /Start microvm error: machine-config\.vcpu_count: The vCPU number is invalid/);
    assert.equal((await put('/machine-config', { vcpu_count: 3, mem_size_mib: 256 })).status, 204);
    assert.equal((await put('/drives/root', (c.drives as unknown[])[0])).status, 204);
    assert.equal((await put('/actions', { action_type: 'InstanceStart' })).status, 204);
    assert.equal(((await unixHttp(sock, 'GET', '/')).body as { state: string }).state, 'Running');
    process.kill(run.pid, 'SIGKILL');
    await run.exited;
  });

  it('MMDS V1 answers the --metadata data: IMDS text for GET, JSON on request, 404 and 405', async () => {
    const sub = `mmds${n++}`;
    const mmdsSock = join(dir, sub, 'mmds.sock');
    const { run } = await boot(config(sub), sub, [], { FAKE_FC_MMDS_SOCK: mmdsSock });
    const get = (path: string, method = 'GET', accept = '*/*') => new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request({ socketPath: mmdsSock, method, path, headers: { Accept: accept } }, (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      req.end();
    });
    assert.deepEqual(await get('/latest/meta-data'), { status: 200, text: 'instance_id: i-1\n' });
    assert.deepEqual(await get('/latest/'), { status: 200, text: 'meta-data\nuser-data\nnested/\ncount' });
    assert.deepEqual(await get('/latest/nested', 'GET', 'application/json'), { status: 200, text: '{"a":"b","deeper":{}}' });
    assert.equal((await get('/latest/count')).status, 501);
    assert.equal((await get('/latest/missing')).status, 404);
    assert.equal((await get('/latest/meta-data', 'PUT')).status, 405);
    process.kill(run.pid, 'SIGKILL');
    await run.exited;
  });

  it('signals and fault switches: SIGHUP flushes and exits 156, SIGTERM kills, crash, no socket, hang', async () => {
    const hup = `hup${n++}`;
    const a = await boot(config(hup), hup);
    process.kill(a.run.pid, 'SIGHUP');
    await a.run.exited;
    assert.equal(a.run.code, 156);
    assert.equal(readFileSync(join(dir, hup, 'fc.metrics'), 'utf8').trim().split('\n').length, 2);
    assert.ok(existsSync(a.sock), 'the API socket is left behind');

    const term = `term${n++}`;
    const b = await boot(config(term), term);
    process.kill(b.run.pid, 'SIGTERM');
    await b.run.exited;
    assert.equal(b.run.signal, 'SIGTERM');
    assert.equal(readFileSync(join(dir, term, 'fc.metrics'), 'utf8').trim().split('\n').length, 1, 'no flush on SIGTERM');

    const crash = `crash${n++}`;
    const c = await boot(config(crash), crash, [], { FAKE_FC_CRASH_AFTER_MS: '300' });
    await c.run.exited;
    assert.equal(c.run.code, 150);

    const nosock = `nosock${n++}`;
    const d = await boot(config(nosock), nosock, [], { FAKE_FC_NO_SOCKET: '1' });
    assert.equal(d.run.code, null);
    assert.equal(existsSync(d.sock), false);
    process.kill(d.run.pid, 'SIGKILL');
    await d.run.exited;

    const hang = `hang${n++}`;
    const e = await boot(config(hang), hang, [], { FAKE_FC_HANG: 'PATCH /vm' });
    await assert.rejects(unixHttp(e.sock, 'PATCH', '/vm', { state: 'Paused' }, 500), /no answer within 500 ms/);
    process.kill(e.run.pid, 'SIGKILL');
    await e.run.exited;
  });

  it('logs the boot-timer line with --boot-timer when the guest writes the marker', async () => {
    const sub = `bt${n++}`;
    const { run, log } = await boot(config(sub), sub, ['--boot-timer'], { FAKE_FC_GUEST_BOOT_MS: '50' });
    for (let i = 0; i < 300 && !/Guest-boot-time/.test(log()); i++) await sleep(100);
    assert.match(log(), /Guest-boot-time = +50000 us 50 ms, +\d+ CPU us \d+ CPU ms/);
    process.kill(run.pid, 'SIGKILL');
    await run.exited;
  });
});
