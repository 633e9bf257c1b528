import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, rmdir } from 'node:fs/promises';
import type { HostFiles } from '../../core/ports.js';

export class NodeHostFiles implements HostFiles {
  // In place: a create pass asks it of its directories, boot files and seed, each in needed
  // and verify, and one access(2) costs less than a thread-pool round trip of fs/promises. A
  // lookup changes nothing on disk, so it never waits for the journal. existsSync makes the
  // same access(2) (F_OK) without building an error for a missing path.
  async exists(path: string): Promise<boolean> {
    return existsSync(path);
  }
  async read(path: string): Promise<Buffer | undefined> {
    try {
      return await readFile(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }
  // Through the pool: a create in a directory takes an ext4 journal handle, which can wait for
  // a commit that the store's fsyncs keep busy; only lookups are made in place.
  async mkdirp(path: string): Promise<void> {
    await mkdir(path, { recursive: true, mode: 0o750 });
  }
  async remove(path: string): Promise<void> {
    await rm(path, { recursive: true, force: true });
  }
  async removeIfEmpty(path: string): Promise<void> {
    try {
      await rmdir(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'ENOENT' && code !== 'EEXIST') throw err;
    }
  }
}

/**
 * A file time in nanoseconds (fs.Stats' bigint `*timeNs`) as the seconds fs.utimesSync takes,
 * to put it back to the microsecond: utimes(2) through Node takes a double and truncates it to
 * nanoseconds, so a time a hair below its microsecond would lose it; half a microsecond more
 * keeps it.
 */
export function utimesSeconds(ns: bigint): number {
  return (Number(ns / 1000n) + 0.5) / 1e6;
}
