import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { unixHttp } from '../../src/adapters/vmm/unix-http.js';

// The stand-in must fail where cloud-hypervisor fails; each refusal below is one of its rules.
const FAKE = fileURLToPath(new URL('../fakes/cloud-hypervisor.mjs', import.meta.url));

let dir: string;
const children: ChildProcess[] = [];
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ch-fake-'));
  writeFileSync(join(dir, 'vmlinux'), 'kernel');
  writeFileSync(join(dir, 'root.img'), '');
  truncateSync(join(dir, 'root.img'), 1 << 20);
  writeFileSync(join(dir, 'seed.img'), 'seed');
});
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

interface Run {
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

function start(args: string[], env: Record<string, string> = {}, fds: number[] = []): Run {
  const child = spawn(FAKE, args, { cwd: dir, env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe', ...fds] });
  children.push(child);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal, stderr })));
  return { child, exited };
}

async function refused(args: string[], code: number, message: RegExp, env: Record<string, string> = {}, fds: number[] = []): Promise<void> {
  const r = await start(args, env, fds).exited;
  assert.equal(r.code, code, `exit code for ${args.join(' ')}: ${r.stderr}`);
  assert.match(r.stderr, message);
}

async function socketUp(path: string, run: Run): Promise<void> {
  for (let i = 0; i < 600 && !existsSync(path); i++) {
    if (run.child.exitCode !== null) assert.fail(`stand-in exited: ${(await run.exited).stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(existsSync(path), `API socket ${path} never appeared`);
}

const base = () => ['--kernel', join(dir, 'vmlinux'), '--cmdline', 'console=ttyS0 root=/dev/vda rw', '--cpus', 'boot=2', '--memory', 'size=1024M'];
const api = (name: string) => join(dir, `${name}.sock`);
const call = async (sock: string, method: 'GET' | 'PUT', verb: string, body?: unknown) => unixHttp(sock, method, `/api/v1/${verb}`, body);

function chunkedPut(sock: string, verb: string, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: sock, method: 'PUT', path: `/api/v1/${verb}`, agent: false, headers: { 'transfer-encoding': 'chunked' } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('cloud-hypervisor stand-in: command line refusals', () => {
  it('refuses an unknown option (clap, exit 2)', () => refused([...base(), '--netdev', 'tap=x'], 2, /unexpected argument '--netdev'/));
  it('refuses a VM option without a payload', () => refused(['--cpus', 'boot=1', '--disk', 'path=x'], 2, /required arguments were not provided[\s\S]*--kernel/));
  it('refuses a single-value option given twice', () => refused([...base(), '--kernel', join(dir, 'vmlinux')], 2, /cannot be used multiple times/));
  it('refuses an unknown key in an option value', () => refused([...base(), '--disk', 'path=root.img,cache=unsafe'], 1, /Error parsing --disk: unknown option: cache/));
  it('refuses a bad toggle and a bad size', async () => {
    await refused([...base(), '--disk', 'path=root.img,readonly=yes'], 1, /invalid value for readonly/);
    await refused([...base().slice(0, -1), 'size=1T'], 1, /invalid size for size: 1T/);
  });
  it('refuses a missing kernel at boot', () => refused(['--kernel', join(dir, 'nope'), '--cmdline', 'x'], 1, /Cannot load kernel[\s\S]*nope/));
  it('refuses a missing disk image', () => refused([...base(), '--disk', `path=${join(dir, 'missing.img')}`], 1, /Failed to open disk image .*missing\.img/));
  it('refuses a bad MAC', () => refused([...base(), '--net', 'fd=3,mac=02:00:00:00:00'], 1, /invalid MAC address/));
  // Node opens descriptors of its own from 3 upwards; 200 is never one of them.
  it('refuses an fd= that is not open', () => refused([...base(), '--net', 'fd=200,mac=02:00:00:00:00:01'], 1, /tap device from fd 200: EBADF/));
  it('refuses an fd= that is open but not a character device', async () => {
    const fd = openSync(join(dir, 'seed.img'), 'r');
    try {
      await refused([...base(), '--net', 'fd=3,mac=02:00:00:00:00:01'], 1, /fd 3: not a character device .*seed\.img/, {}, [fd]);
    } finally {
      closeSync(fd);
    }
  });
  it('refuses a tap= name that is not a TAP device', () => refused([...base(), '--net', 'tap=lo,mac=02:00:00:00:00:01'], 1, /lo is not an existing TAP device/));
  it('refuses --fs without shared memory, and with no backend listening', async () => {
    await refused([...base(), '--fs', `tag=data,socket=${join(dir, 'vfs.sock')}`], 1, /vhost-user requires using shared memory/);
    await refused([...base().slice(0, -1), 'size=1024M,shared=on', '--fs', `tag=data,socket=${join(dir, 'vfs.sock')}`], 1, /Failed connecting the backend .*vfs\.sock: ENOENT/);
  });
  // vmm/src/vm.rs generate_cmdline: linux-loader's insert_str allows printable ASCII only, in at
  // most 0x10000 bytes with the NUL (x86_64 CMDLINE_MAX_SIZE).
  it('refuses a command line with a non-printable-ASCII character, in each version\'s wording', async () => {
    const args = ['--kernel', join(dir, 'vmlinux'), '--cmdline', 'console=ttyS0 hostname_label=café'];
    await refused(args, 1, /Error booting VM\n\s+Cannot modify the kernel command line\n\s+String contains a non-printable ASCII character\./);
    await refused(args, 1, /Error booting VM\n\s+Cannot modify the kernel command line: String contains a non-printable ASCII character\./, { FAKE_CH_VERSION: '41' });
  });
  it('refuses a command line over 64 KiB with its NUL', async () => {
    await refused(['--kernel', join(dir, 'vmlinux'), '--cmdline', `x=${'y'.repeat(0x10000 - 2)}`], 1, /Cannot modify the kernel command line\n\s+Inserting string would make command line too long\./);
  });
  it('refuses a serial file mode without a path', () => refused([...base(), '--serial', 'file='], 1, /Path missing when using file serial mode/));
  it('v41 refuses an existing API socket path; v53 replaces a stale one', async () => {
    const sock = api('stale');
    writeFileSync(sock, '');
    await refused(['--api-socket', `path=${sock}`, ...base()], 1, /Address in use/, { FAKE_CH_VERSION: '41' });
    const run = start(['--api-socket', `path=${sock}`, ...base()], { FAKE_CH_VERSION: '53' });
    for (let i = 0; i < 300; i++) {
      const ok = await call(sock, 'GET', 'vmm.ping').then(() => true, () => false);
      if (ok) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal((await call(sock, 'GET', 'vmm.ping')).status, 200);
    run.child.kill('SIGTERM');
    assert.equal((await run.exited).code, 0);
  });
});

describe('cloud-hypervisor stand-in: a booted VM', () => {
  let backend: Server;
  const connections: string[] = [];
  before(async () => {
    backend = createServer((c) => {
      connections.push('connected');
      c.on('error', () => undefined);
    });
    await new Promise<void>((r) => backend.listen(join(dir, 'virtiofsd.sock'), r));
  });
  after(() => backend.close());

  it('boots from the command line, records descriptors and serves the state machine', async () => {
    const sock = api('vm1');
    const record = join(dir, 'record');
    const tap = openSync('/dev/null', 'r+'); // an open character device, as /dev/tapN is
    const run = start(
      ['--api-socket', `path=${sock}`, '--log-file', join(dir, 'vm1.log'), '-v', ...base().slice(0, -1), 'size=1024M,shared=on',
        '--disk', `path=${join(dir, 'root.img')}`, `path=${join(dir, 'seed.img')},readonly=on`,
        '--net', 'fd=3,mac=02:00:00:00:00:01', '--fs', `tag=data,socket=${join(dir, 'virtiofsd.sock')}`,
        '--vsock', `cid=3,socket=${join(dir, 'vm1.vsock')}`, '--serial', `file=${join(dir, 'vm1.console')}`, '--console', 'off'],
      { FAKE_CH_RECORD: record }, [tap]);
    closeSync(tap);
    await socketUp(sock, run);
    const ping = await call(sock, 'GET', 'vmm.ping');
    assert.equal(ping.status, 200);
    assert.equal(JSON.parse(ping.text).pid, run.child.pid);
    const info = JSON.parse((await call(sock, 'GET', 'vm.info')).text);
    assert.equal(info.state, 'Running');
    assert.deepEqual(info.config.disks.map((d: { readonly: boolean }) => d.readonly), [false, true]);
    assert.equal(info.config.memory.size, 1024 * 1024 * 1024);
    assert.deepEqual(info.config.net[0].fds, [3]);
    assert.equal(connections.length, 1, 'the virtio-fs backend was connected at boot');
    assert.ok(existsSync(join(dir, 'vm1.vsock')) && existsSync(join(dir, 'vm1.console')));
    const rec = JSON.parse(readFileSync(join(record, `${run.child.pid}.json`), 'utf8'));
    assert.deepEqual(rec.fds.filter((f: { fd: number }) => f.fd === 3).map((f: { target: string; characterDevice: boolean }) => [f.target, f.characterDevice]), [['/dev/null', true]]);

    // state machine and v53's error convention (JSON array of the chain)
    const resume = await call(sock, 'PUT', 'vm.resume');
    assert.equal(resume.status, 500);
    assert.deepEqual(JSON.parse(resume.text), ['Error resuming the VM', 'Invalid VM state transition: Running to Running']);
    assert.equal((await call(sock, 'PUT', 'vm.pause')).status, 204);
    assert.equal(JSON.parse((await call(sock, 'GET', 'vm.info')).text).state, 'Paused');
    assert.equal((await call(sock, 'PUT', 'vm.snapshot', { destination_url: 'file:///tmp/x' })).status, 204);
    assert.equal((await call(sock, 'PUT', 'vm.power-button')).status, 500, 'a paused guest cannot see the power button');
    assert.equal((await call(sock, 'PUT', 'vm.resume')).status, 204);
    assert.equal((await call(sock, 'GET', 'vm.pause')).status, 400, 'wrong method');
    assert.equal((await call(sock, 'GET', 'vm.bogus')).status, 404);
    const create = await call(sock, 'PUT', 'vm.create', { payload: { kernel: '/k' }, cpus: { boot_vcpus: 'two' } });
    assert.equal(create.status, 400, 'body checked against the OpenAPI VmConfig');
    assert.match(create.text, /max_vcpus/);
    const counters = JSON.parse((await call(sock, 'GET', 'vm.counters')).text);
    assert.deepEqual(Object.keys(counters), ['_disk0', '_disk1', '_net2']);
    assert.ok(Number.isInteger(counters._net2.rx_bytes));

    // the guest powers off on the ACPI button and the VMM exits 0
    assert.equal((await call(sock, 'PUT', 'vm.power-button')).status, 204);
    assert.equal((await run.exited).code, 0);
    assert.ok(existsSync(sock), 'the socket is left behind for the caller to remove');
  });

  it('starts its log and serial files afresh, as File::create does: nothing of an earlier run is left', async () => {
    const sock = api('fresh');
    const [log, serial] = [join(dir, 'fresh.log'), join(dir, 'fresh.console')];
    const old = 'earlier run: Linux version 6.1 booted\n'.repeat(50);
    writeFileSync(log, old);
    writeFileSync(serial, old);
    const run = start(['--api-socket', `path=${sock}`, '--log-file', log, '-v', ...base(), '--serial', `file=${serial}`, '--console', 'off']);
    await socketUp(sock, run);
    assert.equal((await call(sock, 'GET', 'vmm.ping')).status, 200);
    assert.equal(readFileSync(serial, 'utf8'), '', 'the serial file is truncated');
    const text = readFileSync(log, 'utf8');
    assert.doesNotMatch(text, /earlier run/, 'the log file is truncated, not appended to');
    assert.match(text, /<vmm>/);
    run.child.kill('SIGKILL');
    await run.exited;
  });

  it('idles with only an API socket: v53 404 JSON vs v41 500 text before vm.create; create, boot, vmm.shutdown', async () => {
    for (const version of ['53', '41']) {
      const sock = api(`idle${version}`);
      rmSync(sock, { force: true });
      const run = start(['--api-socket', sock], { FAKE_CH_VERSION: version });
      await socketUp(sock, run);
      const info = await call(sock, 'GET', 'vm.info');
      if (version === '53') {
        assert.equal(info.status, 404);
        assert.deepEqual(JSON.parse(info.text), ['Error getting VM info', 'VM is not created']);
      } else {
        assert.equal(info.status, 500);
                assert.equal(info.text, 'Error getting VM info: VM is not created');
      }
      assert.equal(await chunkedPut(sock, 'vm.create', '{"payload":{"kernel":"/k"}}'), 400, 'micro_http takes bodies by Content-Length only');
      assert.equal((await call(sock, 'PUT', 'vm.create', { payload: { kernel: join(dir, 'vmlinux') }, cpus: { boot_vcpus: 2, max_vcpus: 1 } })).status, 500, 'max < boot');
      assert.equal((await call(sock, 'PUT', 'vm.create', { payload: { kernel: join(dir, 'vmlinux') }, disks: [{ path: join(dir, 'root.img') }] })).status, 204);
      assert.equal((await call(sock, 'PUT', 'vm.create', { payload: { kernel: join(dir, 'vmlinux') } })).status, 500, 'already created');
      assert.equal((await call(sock, 'PUT', 'vm.boot')).status, 204);
      await call(sock, 'PUT', 'vm.shutdown');
      assert.equal(JSON.parse((await call(sock, 'GET', 'vm.info')).text).state, version === '53' ? 'Created' : 'Shutdown');
      assert.equal((await call(sock, 'PUT', 'vmm.shutdown')).status, 204);
      assert.equal((await run.exited).code, 0);
    }
  });

  it('SIGTERM exits cleanly, SIGHUP kills, and the fault switches work', async () => {
    const runs = ['TERM', 'HUP'].map((s) => ({ s, run: start(['--api-socket', api(`sig${s}`)]) }));
    for (const { s, run } of runs) {
      await socketUp(api(`sig${s}`), run);
      run.child.kill(`SIG${s}` as NodeJS.Signals);
      const r = await run.exited;
      if (s === 'TERM') assert.equal(r.code, 0);
      else assert.equal(r.signal, 'SIGHUP');
    }
    const crash = await start(['--api-socket', api('crash'), ...base()], { FAKE_CH_FAULTS: 'exit-after=100' }).exited;
    assert.equal(crash.code, 1);
    const poweroff = await start(['--api-socket', api('poweroff'), ...base()], { FAKE_CH_FAULTS: 'poweroff-after=100' }).exited;
    assert.equal(poweroff.code, 0, 'a guest power-off ends the VMM with 0');
    const kept = start(['--api-socket', api('kept'), '--no-shutdown', ...base()], { FAKE_CH_FAULTS: 'poweroff-after=100' });
    await socketUp(api('kept'), kept);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(JSON.parse((await call(api('kept'), 'GET', 'vm.info')).text).state, 'Shutdown', '--no-shutdown keeps the VMM after power-off');
    kept.child.kill('SIGTERM');
    await kept.exited;
    const deaf = start(['--api-socket', api('deaf'), ...base()], { FAKE_CH_FAULTS: 'ignore-power-button,ignore-sigterm' });
    await socketUp(api('deaf'), deaf);
    assert.equal((await call(api('deaf'), 'PUT', 'vm.power-button')).status, 204);
    deaf.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(deaf.child.exitCode, null, 'still running after power button and SIGTERM');
    deaf.child.kill('SIGKILL');
    assert.equal((await deaf.exited).signal, 'SIGKILL');
  });
});
