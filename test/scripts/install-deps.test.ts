import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { ROOT, tempDir } from '../helpers/daemon.js';

// What the tests use from Debian: every binary they spawn (directly or through matchlock) and
// the files they read from packages. scripts/install-deps.sh runs apt-get with
// --no-install-recommends, so each must come from a package it names, from a hard Depends
// (or Pre-Depends) of one, or be Essential.
const BINARIES = [
  'qemu-system-x86_64', 'ip', 'dnsmasq', 'mkfs.ext4', 'resize2fs', 'debugfs', 'dumpe2fs', 'mkfs.vfat', 'mcopy', 'openssl',
  'protoc', 'grpc_python_plugin', 'docker-registry', 'skopeo', 'mkfs.xfs', 'dhcpd', 'nft', 'iptables-nft', 'sysctl', 'ping', 'systemd-analyze',
  'tar', 'gzip', 'dd', 'cp', 'truncate', 'du', 'pgrep', 'sh', 'mlabel', 'mtype', 'rm', 'promtool', 'script',
  // the full-disk tests' loop-mounted state dirs
  'losetup', 'mount', 'umount', 'mountpoint', 'fallocate', 'find', 'sync',
];
const FILES = [
  // protoc's well-known types, imported by the reference protos (libprotobuf-dev, a Recommends).
  '/usr/include/google/protobuf/timestamp.proto',
  '/usr/bin/python3',
  // Cloud Hypervisor shares' virtiofsd (qemu-system-common; not on PATH).
  '/usr/lib/qemu/virtiofsd',
];
const PYTHON_MODULES = ['grpc', 'google.protobuf'];

const apt = spawnSync('sh', ['-c', 'command -v dpkg-query && command -v apt-cache']).status === 0;
const skip = !apt && !process.env.CI ? 'needs dpkg and apt (Debian)' : false;

function declared(script: string): string[] {
  const out = execFileSync('bash', ['-c', 'eval "$(sed -n "/^DEBIAN_PACKAGES=(/,/^)/p" "$1")"; printf "%s\\n" "${DEBIAN_PACKAGES[@]}"', 'x', script], { encoding: 'utf8' });
  return out.split('\n').filter(Boolean);
}

/** The named packages and everything they hard-depend on, recursively. */
function closure(pkgs: string[]): Set<string> {
  const out = execFileSync('apt-cache', ['depends', '--recurse', '--no-recommends', '--no-suggests', '--no-conflicts', '--no-breaks', '--no-replaces', '--no-enhances', ...pkgs], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const names = new Set<string>();
  for (const line of out.split('\n')) {
    if (line && !line.startsWith(' ')) names.add(line.replace(/^<|>$/g, '').replace(/:\w+$/, ''));
    const dep = /^\s+(?:\|)?(?:Pre)?Depends: <?([^>\s]+)>?/.exec(line);
    if (dep?.[1]) names.add(dep[1].replace(/:\w+$/, ''));
  }
  return names;
}

/** The package that installed `path`; merged-/usr systems register many files under /bin and /sbin. */
function owner(path: string): string | undefined {
  const real = realpathSync(path);
  for (const p of new Set([path, real, path.replace(/^\/usr/, ''), real.replace(/^\/usr/, '')])) {
    const res = spawnSync('dpkg-query', ['-S', p], { encoding: 'utf8' });
    const line = res.stdout.split('\n').find((l) => l.endsWith(`: ${p}`) && !l.startsWith('diversion'));
    if (res.status === 0 && line) return line.split(':')[0]?.split(',')[0]?.trim();
  }
  return undefined;
}

function essential(pkg: string): boolean {
  return spawnSync('dpkg-query', ['-W', '-f=${Essential}', pkg], { encoding: 'utf8' }).stdout.trim() === 'yes';
}

/** Packages the tests use that `script` does not bring on a --no-install-recommends install. */
export function unnamedPackages(script: string): string[] {
  const have = closure(declared(script));
  const used: string[] = [...FILES];
  for (const bin of BINARIES) {
    const found = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' }).stdout.trim();
    used.push(found || `(${bin} not installed)`);
  }
  for (const mod of PYTHON_MODULES) {
    used.push(spawnSync('/usr/bin/python3', ['-c', `import ${mod}, os; print(os.path.realpath(${mod}.__file__))`], { encoding: 'utf8' }).stdout.trim() || `(python module ${mod} not installed)`);
  }
  const missing = new Set<string>();
  for (const path of used) {
    const pkg = path.startsWith('(') ? undefined : owner(path);
    if (!pkg) missing.add(`${path}: no package owns it`);
    else if (!have.has(pkg) && !essential(pkg)) missing.add(`${pkg} (for ${path})`);
  }
  return [...missing].sort();
}

it('install-deps.sh names every Debian package the tests use, Recommends not counted', { skip }, () => {
  assert.deepEqual(unnamedPackages(join(ROOT, 'scripts/install-deps.sh')), []);
});

it('the check fails on a copy of install-deps.sh without libprotobuf-dev', { skip }, () => {
  const tmp = tempDir('deps');
  try {
    const copy = join(tmp.path, 'install-deps.sh');
    const text = readFileSync(join(ROOT, 'scripts/install-deps.sh'), 'utf8');
    assert.match(text, /\blibprotobuf-dev\b/);
    writeFileSync(copy, text.replace(/\blibprotobuf-dev\b/g, ''));
    const missing = unnamedPackages(copy);
    assert.ok(missing.some((m) => m.startsWith('libprotobuf-dev (for /usr/include/google/protobuf/timestamp.proto)')), missing.join('\n'));
  } finally {
    tmp.remove();
  }
});
