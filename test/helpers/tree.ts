import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';

/** What is compared of each path: type, mode bits, owner, xattrs, content, link target, links. */
export interface PathInfo {
  type: 'file' | 'dir' | 'symlink' | 'other';
  mode: string;
  owner: string;
  xattrs: string;
  content?: string;
  link?: string;
  /** Other paths sharing this file's inode, sorted. */
  hardlinks?: string;
}

/** getfattr's quoting undone: `\ooo` octal escapes and `\\`. */
function unquote(s: string): string {
  return Buffer.from(s.replace(/\\([0-7]{3})|\\\\/g, (m, o: string | undefined) => (o ? String.fromCharCode(parseInt(o, 8)) : '\\')), 'latin1').toString('utf8');
}

/** Every xattr under `root` (not following symlinks): relative path -> "name=base64;…". */
export function xattrsOf(root: string): Map<string, string> {
  const out = new Map<string, string[]>();
  let dump = '';
  try {
    dump = execFileSync('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'base64', '.'], { cwd: root, encoding: 'latin1', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 26 });
  } catch (err) {
    dump = String((err as { stdout?: string }).stdout ?? '');
  }
  let file = '';
  for (const line of dump.split('\n')) {
    if (line.startsWith('# file: ')) file = unquote(line.slice(8)).replace(/^\.\/?/, '');
    else if (line.includes('=')) out.set(file, [...(out.get(file) ?? []), line]);
  }
  return new Map([...out].map(([k, v]) => [k, v.sort().join(';')]));
}

/** Describes every path under `root` (root itself as ''), for comparing two unpacks. */
export function describeTree(root: string, skip: (rel: string) => boolean = () => false): Map<string, PathInfo> {
  const xattrs = xattrsOf(root);
  const out = new Map<string, PathInfo>();
  const inodes = new Map<number, string[]>();
  const walk = (rel: string) => {
    const at = rel ? join(root, rel) : root;
    const st = lstatSync(at);
    const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
    const info: PathInfo = { type, mode: (st.mode & 0o7777).toString(8).padStart(4, '0'), owner: `${st.uid}:${st.gid}`, xattrs: xattrs.get(rel) ?? '' };
    if (type === 'file') {
      info.content = createHash('sha256').update(readFileSync(at)).digest('hex').slice(0, 16) + `/${st.size}`;
      if (st.nlink > 1) inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), rel]);
    }
    if (type === 'symlink') {
      info.link = readlinkSync(at);
      delete (info as Partial<PathInfo>).mode;
    }
    out.set(rel, info);
    if (type === 'dir') for (const n of readdirSync(at).sort()) if (!skip(rel ? `${rel}/${n}` : n)) walk(rel ? `${rel}/${n}` : n);
  };
  walk('');
  for (const group of inodes.values()) {
    for (const p of group) {
      const info = out.get(p);
      if (info) info.hardlinks = group.filter((q) => q !== p).sort().join(',');
    }
  }
  return out;
}

/** Lines "path: field ours != theirs" for every difference, empty when the trees agree. */
export function diffTrees(ours: Map<string, PathInfo>, theirs: Map<string, PathInfo>): string[] {
  const out: string[] = [];
  for (const p of new Set([...ours.keys(), ...theirs.keys()])) {
    const a = ours.get(p);
    const b = theirs.get(p);
    if (!a || !b) {
      out.push(`/${p}: ${a ? 'only in ours' : 'missing from ours'} (${JSON.stringify(a ?? b)})`);
      continue;
    }
    for (const k of ['type', 'mode', 'owner', 'xattrs', 'content', 'link', 'hardlinks'] as const) {
      if ((a[k] ?? '') !== (b[k] ?? '')) out.push(`/${p}: ${k} ${JSON.stringify(a[k])} != ${JSON.stringify(b[k])}`);
    }
  }
  return out.sort();
}

/**
 * Describes the same paths inside an ext4 image, read with debugfs (never mounted): content
 * and link targets from `rdump`, type, mode, owner, inode and xattrs from `stat`.
 */
export function describeExt4(image: string, paths: readonly string[], scratch: string): Map<string, PathInfo> {
  execFileSync('debugfs', ['-R', `rdump / ${scratch}`, image], { stdio: 'ignore' });
  const dumped = describeTree(scratch, (rel) => rel === 'lost+found');
  const cmds = join(scratch, '..', `${Date.now()}.debugfs`);
  execFileSync('sh', ['-c', `cat > ${cmds}`], { input: paths.map((p) => `stat "/${p}"\n`).join('') });
  const out = execFileSync('debugfs', ['-f', cmds, image], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 26 });
  const result = new Map<string, PathInfo>();
  const inodes = new Map<string, string[]>();
  for (const section of out.split(/^debugfs: stat /m).slice(1)) {
    const path = (/^"\/(.*)"\n/.exec(section)?.[1] ?? '').normalize();
    const m = /Inode: (\d+)\s+Type: (\S+)\s+Mode:\s+(\d+)/.exec(section);
    const u = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(section);
    const links = Number(/Links: (\d+)/.exec(section)?.[1] ?? 1);
    const base = dumped.get(path);
    if (!m || !u || !base) continue;
    const attrs: string[] = [];
    const ea = /Extended attributes:\n((?: {2}.*\n)*)/.exec(section)?.[1] ?? '';
    for (const line of ea.split('\n').filter(Boolean)) {
      const a = /^ {2}(\S+) \(\d+\) = (.*)$/.exec(line);
      if (!a?.[1]) continue;
      const v = a[2] ?? '';
      const bytes = v.startsWith('"') ? Buffer.from(v.slice(1, -1)) : Buffer.from(v.trim().split(/\s+/).filter(Boolean).map((h) => parseInt(h, 16)));
      attrs.push(`${a[1]}=0s${bytes.toString('base64')}`);
    }
    const type = m[2] === 'regular' ? 'file' : m[2] === 'directory' ? 'dir' : m[2] === 'symlink' ? 'symlink' : 'other';
    const info: PathInfo = { ...base, type, mode: (parseInt(m[3] ?? '0', 8) & 0o7777).toString(8).padStart(4, '0'), owner: `${u[1]}:${u[2]}`, xattrs: attrs.sort().join(';') };
    delete info.hardlinks;
    if (type === 'symlink') delete (info as Partial<PathInfo>).mode;
    if (type === 'file' && links > 1) inodes.set(m[1] ?? '', [...(inodes.get(m[1] ?? '') ?? []), path]);
    result.set(path, info);
  }
  for (const group of inodes.values()) {
    for (const p of group) {
      const info = result.get(p);
      if (info) info.hardlinks = group.filter((q) => q !== p).sort().join(',');
    }
  }
  return result;
}
