#!/usr/bin/env node
// A stand-in for Firecracker's `jailer` (v1.16.1, docs/jailer.md) on machines without KVM and
// cgroup v2 controllers. It checks the command line with the jailer's rules, builds the jail
// (<chroot-base>/<exec-file name>/<id>/root, the exec file copied in, owned by uid:gid), makes
// the cgroup under $FAKE_JAILER_CGROUP_ROOT (standing for the cgroup v2 mount) and writes the
// --cgroup values there, then runs the exec file as uid:gid with a cleared environment. What
// it cannot do is pivot_root: it tells the Firecracker stand-in its root in FAKE_FC_CHROOT.
// With --new-pid-ns it writes Firecracker's pid to <jail root>/<exec-file name>.pid and exits
// 0, as the jailer's parent does. FAKE_JAILER_HOLD_MS: how long it waits after it started
// Firecracker (and put it in the cgroup) before it writes that pid and exits, a jailer caught
// between its fork and its exit.
import { spawn } from 'node:child_process';
import { appendFileSync, chownSync, copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, isAbsolute, join } from 'node:path';
import { setTimeout } from 'node:timers';

const argv = process.argv.slice(2);
function fail(msg) {
  process.stderr.write(`Jailer error: ${msg}\n`);
  process.exit(1);
}
if (process.env.FAKE_JAILER_RECORD) appendFileSync(process.env.FAKE_JAILER_RECORD, JSON.stringify(argv) + '\n');

const VALUE = new Set(['id', 'exec-file', 'uid', 'gid', 'chroot-base-dir', 'netns', 'cgroup', 'cgroup-version', 'parent-cgroup', 'resource-limit']);
const FLAGS = new Set(['daemonize', 'new-pid-ns', 'version', 'help']);
const REPEATABLE = new Set(['cgroup', 'resource-limit']);
const a = { cgroup: [], 'resource-limit': [] };
let rest = [];
for (let i = 0; i < argv.length; i++) {
  const arg = argv[i];
  if (arg === '--') {
    rest = argv.slice(i + 1);
    break;
  }
  if (!arg.startsWith('--')) fail(`Arguments parsing error: Found argument '${arg}' which wasn't expected, or isn't valid in this context.`);
  let [name, value] = arg.slice(2).split(/=(.*)/s, 2);
  if (VALUE.has(name)) {
    if (value === undefined) value = argv[++i];
    if (value === undefined) fail(`Arguments parsing error: The argument '--${name}' requires a value, but none was supplied`);
    if (REPEATABLE.has(name)) a[name].push(value);
    else if (name in a) fail(`Arguments parsing error: The argument '--${name}' was provided more than once.`);
    else a[name] = value;
  } else if (FLAGS.has(name)) {
    a[name] = true;
  } else {
    fail(`Arguments parsing error: Found argument '--${name}' which wasn't expected, or isn't valid in this context.`);
  }
}
if (a.version) {
  process.stdout.write('Jailer v1.16.1\n');
  process.exit(0);
}
for (const req of ['id', 'exec-file', 'uid', 'gid']) if (a[req] === undefined) fail(`Arguments parsing error: Missing mandatory argument '--${req}'.`);
if (!/^[A-Za-z0-9-]{1,64}$/.test(a.id)) fail(`Invalid instance ID: ${a.id}`);
for (const k of ['uid', 'gid']) if (!/^\d+$/.test(a[k]) || Number(a[k]) > 2 ** 32 - 1) fail(`Invalid ${k}: ${a[k]}`);
const exec = a['exec-file'];
if (!existsSync(exec) || !statSync(exec).isFile()) fail(`Failed to canonicalize path ${exec}: No such file or directory (os error 2)`);
const execName = basename(exec);
// src/jailer/src/env.rs: the exec file's name must contain "firecracker".
if (!execName.includes('firecracker')) fail('Invalid filename. The file name of `--exec-file` must contain "firecracker"');
const base = a['chroot-base-dir'] ?? '/srv/jailer';
if (!isAbsolute(base)) fail(`Invalid chroot base dir: ${base} is not an absolute path`);
if (a.netns !== undefined && !existsSync(a.netns)) fail(`Failed to open netns ${a.netns}: No such file or directory (os error 2)`);
const version = a['cgroup-version'] ?? '1';
if (version !== '1' && version !== '2') fail(`Invalid cgroup version: ${version}`);
for (const lim of a['resource-limit']) {
  const [res, val] = lim.split('=');
  if (!['fsize', 'no-file'].includes(res) || !/^\d+$/.test(val ?? '')) fail(`Invalid resource limit: ${lim}`);
}

// Cgroups: <root>/<parent>/<id>/<file> (v2); the controller must be available at the root.
const cgroups = a.cgroup.map((c) => {
  const m = /^([a-z_]+)\.([a-z_.]+)=(.+)$/s.exec(c);
  if (!m) fail(`Invalid cgroup: ${c}. Expected <file>=<value>`);
  return { controller: m[1], file: `${m[1]}.${m[2]}`, value: m[3] };
});
let cgroupDir;
if (cgroups.length > 0) {
  if (version !== '2') fail('the stand-in models cgroup v2 only (--cgroup-version 2)');
  const root = process.env.FAKE_JAILER_CGROUP_ROOT;
  if (!root || !existsSync(join(root, 'cgroup.controllers'))) fail('Cgroup error: cgroup v2 is not mounted (no cgroup.controllers at the root)');
  const available = readFileSync(join(root, 'cgroup.controllers'), 'utf8').split(/\s+/);
  for (const c of cgroups) if (!available.includes(c.controller)) fail(`Cgroup error: controller ${c.controller} is not available (${c.file})`);
  const parent = join(root, a['parent-cgroup'] ?? execName);
  cgroupDir = join(parent, a.id);
  mkdirSync(cgroupDir, { recursive: true });
  writeFileSync(join(parent, 'cgroup.subtree_control'), [...new Set(cgroups.map((c) => `+${c.controller}`))].join(' ') + '\n');
  for (const c of cgroups) writeFileSync(join(cgroupDir, c.file), c.value + '\n');
}

// The jail: created, the exec file copied in (the jailer copies, never links), owned by uid:gid.
const uid = Number(a.uid);
const gid = Number(a.gid);
const chroot = join(base, execName, a.id, 'root');
mkdirSync(chroot, { recursive: true });
copyFileSync(exec, join(chroot, execName));
chownSync(chroot, uid, gid);
mkdirSync(join(chroot, 'dev', 'net'), { recursive: true });

// The environment is cleared; only the stand-ins' own switches pass.
const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', FAKE_FC_CHROOT: chroot };
for (const [k, v] of Object.entries(process.env)) if (k.startsWith('FAKE_FC_') || k === 'MATCHLOCK_SPECS') env[k] = v;
const now = BigInt(Date.now()) * 1000n;
const fcArgs = [`--id=${a.id}`, `--start-time-us=${now}`, `--start-time-cpu-us=${Math.round(process.cpuUsage().user)}`, ...rest];
// The stand-in runs the original exec file (its copy in the jail could not find its modules).
const child = spawn(exec, fcArgs, { cwd: chroot, env, uid, gid, detached: !!a.daemonize, stdio: a.daemonize ? 'ignore' : 'inherit' });
if (cgroupDir) appendFileSync(join(cgroupDir, 'cgroup.procs'), `${child.pid}\n`);
if (a['new-pid-ns'] || a.daemonize) {
  child.unref();
  setTimeout(() => {
    // FAKE_JAILER_FAIL_CODE: a jailer that fails after its fork (it exits with that code
    // without writing the pid), leaving the Firecracker it started behind.
    if (process.env.FAKE_JAILER_FAIL_CODE) process.exit(Number(process.env.FAKE_JAILER_FAIL_CODE));
    writeFileSync(join(chroot, `${execName}.pid`), `${child.pid}`);
    process.exit(0);
  }, Number(process.env.FAKE_JAILER_HOLD_MS ?? 0));
} else {
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(sig, () => child.kill(sig));
  child.on('exit', (code, signal) => (signal ? process.kill(process.pid, signal) : process.exit(code ?? 1)));
}
