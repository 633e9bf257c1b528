import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './daemon.js';

/** Debian's python3; a python3 elsewhere on PATH lacks the Debian modules cloud-init needs. */
const PYTHON = '/usr/bin/python3';
/** cloud-init 22.4's imports, all from Debian packages (scripts/install-deps.sh). */
const MODULES = ['yaml', 'jinja2', 'jsonschema', 'configobj', 'jsonpatch', 'requests', 'netifaces', 'serial', 'oauthlib'];

/** Why cloud-init's own code cannot run here, or undefined when it can. */
export function cloudInitMissing(): string | undefined {
  if (!existsSync(PYTHON)) return `${PYTHON} is not installed`;
  const r = spawnSync(PYTHON, ['-c', MODULES.map((m) => `import ${m}`).join('; ')], { encoding: 'utf8' });
  if (r.status !== 0) return `cloud-init's Python modules are missing (scripts/install-deps.sh): ${r.stderr.trim().split('\n').pop() ?? ''}`;
  if (spawnSync('sh', ['-c', 'command -v apt-get && command -v dpkg-deb']).status !== 0) return 'apt-get and dpkg-deb are needed to fetch cloud-init';
  return undefined;
}

/**
 * Debian's cloud-init package, extracted (not installed) once per version under the OS temp
 * dir. Returns the directory holding the `cloudinit` Python package.
 */
export function cloudInitPackage(): string {
  const version = /Candidate: (\S+)/.exec(execFileSync('apt-cache', ['policy', 'cloud-init'], { encoding: 'utf8' }))?.[1];
  if (!version || version === '(none)') throw new Error('apt-cache knows no cloud-init (run apt-get update)');
  const dir = join(tmpdir(), 'matchlock-cloud-init', version);
  const pkg = join(dir, 'usr/lib/python3/dist-packages');
  if (existsSync(join(pkg, 'cloudinit'))) return pkg;
  mkdirSync(join(tmpdir(), 'matchlock-cloud-init'), { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'matchlock-cloud-init', '.fetch-'));
  try {
    execFileSync('apt-get', ['download', `cloud-init=${version}`], { cwd: work, stdio: 'ignore' });
    const deb = readdirSync(work).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error('apt-get download cloud-init gave no .deb');
    execFileSync('dpkg-deb', ['-x', deb, 'x'], { cwd: work });
    rmSync(dir, { recursive: true, force: true });
    renameSync(join(work, 'x'), dir);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return pkg;
}

export interface CloudInitReading {
  /** Whether the NoCloud datasource took the seed at all. */
  found: boolean;
  /** Warnings and errors cloud-init logged while reading and consuming the seed. */
  logs: [string, string][];
  instance_id?: string;
  hostname?: string;
  metadata?: Record<string, unknown>;
  /** The config the modules see: user-data and vendor-data cloud-config merged. */
  cloud_config?: Record<string, unknown>;
  /** Files under /var/lib/cloud/instances/<id>/ (scripts/vendor/..., cloud-config.txt, ...). */
  instance_files?: Record<string, string>;
  vendordata_raw?: string;
  network?: {
    /** [mac, name, driver, device_id] for each NIC cloud-init renames before rendering. */
    renames: [string, string, string | null, string | null][];
    interfaces: { name: string; mac_address: string | null; subnets: Record<string, unknown>[] }[];
    /** Renderer -> path -> content. */
    rendered: Record<'eni' | 'networkd' | 'netplan', Record<string, string>>;
  };
}

/** Writes `files` as a NoCloud seed directory and returns how Debian's cloud-init reads it. */
export function cloudInitReads(files: Record<string, Buffer>): CloudInitReading {
  const pkg = cloudInitPackage();
  const work = mkdtempSync(join(tmpdir(), 'matchlock-ci-seed-'));
  try {
    const seed = join(work, 'seed');
    mkdirSync(seed);
    for (const [name, data] of Object.entries(files)) writeFileSync(join(seed, name), data);
    const out = execFileSync(PYTHON, [join(ROOT, 'test/helpers/cloud_init_reads.py'), seed, join(work, 'run')], {
      encoding: 'utf8',
      env: { ...process.env, PYTHONPATH: pkg, PYTHONDONTWRITEBYTECODE: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
      maxBuffer: 64 * 1024 * 1024,
    });
    return JSON.parse(out) as CloudInitReading;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
