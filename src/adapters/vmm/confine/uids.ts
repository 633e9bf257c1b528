import { mkdir, open, readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

export interface UidRange {
  first: number;
  last: number;
}

/**
 * `FIRST-LAST`, both inclusive, above the system's accounts (>= 1000) and below the
 * overflow id 65534's neighbours up to 2^32-2. Undefined for an empty setting.
 */
export function parseUidRange(text: string): UidRange | undefined {
  if (text === '') return undefined;
  const m = /^(\d+)-(\d+)$/.exec(text);
  const first = Number(m?.[1]);
  const last = Number(m?.[2]);
  if (!m || first < 1000 || last < first || last > 4_294_967_294) throw new Error(`must be FIRST-LAST with 1000 <= FIRST <= LAST (got "${text}")`);
  return { first, last };
}

/**
 * One uid (used as gid too) per VM from a range, so no two VMMs share a uid: a VMM that a
 * guest took over cannot signal, or read the /proc of, another VM's VMM. A claim is a file
 * named by the uid, created with O_EXCL (so two VMs starting at once never get the same
 * one), holding the VM's uid; it lives as long as the VM and is found again on a restart.
 */
export class UidPool {
  /** `setting`: the setting the range comes from, named when the range runs out. */
  constructor(
    private readonly dir: string,
    private readonly range: UidRange,
    private readonly setting = 'vmm-uid-range',
  ) {}

  private async claims(): Promise<Map<number, string>> {
    const out = new Map<number, string>();
    for (const name of await readdir(this.dir).catch(() => [] as string[])) {
      if (!/^\d+$/.test(name)) continue;
      out.set(Number(name), (await readFile(join(this.dir, name), 'utf8').catch(() => '')).trim());
    }
    return out;
  }

  /** The VM's uid: the one it already holds, else the lowest free one in the range. */
  async claim(vmUid: string): Promise<number> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    for (let attempt = 0; attempt < 8; attempt++) {
      const held = await this.claims();
      for (const [uid, owner] of held) if (owner === vmUid) return uid;
      for (let uid = this.range.first; uid <= this.range.last; uid++) {
        if (held.has(uid)) continue;
        try {
          const fh = await open(join(this.dir, String(uid)), 'wx', 0o600);
          await fh.writeFile(`${vmUid}\n`);
          await fh.sync();
          await fh.close();
          return uid;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
          break; // taken meanwhile: read the claims again
        }
      }
      if (held.size >= this.range.last - this.range.first + 1) break;
    }
    throw new Error(`no free uid left in ${this.setting} ${this.range.first}-${this.range.last}: every one is held by a VM`);
  }

  /** Whether the VM holds a uid of the range. */
  async holds(vmUid: string): Promise<boolean> {
    return (await this.uidOf(vmUid)) !== undefined;
  }

  /** The uid the VM holds, without claiming one; undefined when it holds none. */
  async uidOf(vmUid: string): Promise<number | undefined> {
    for (const [uid, owner] of await this.claims()) if (owner === vmUid) return uid;
    return undefined;
  }

  /** Gives the VM's uid back; releasing none succeeds. */
  async release(vmUid: string): Promise<void> {
    for (const [uid, owner] of await this.claims()) if (owner === vmUid) await rm(join(this.dir, String(uid)), { force: true });
  }
}
