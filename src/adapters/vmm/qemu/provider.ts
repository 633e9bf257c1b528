import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import type { Launch, Logger, VmmProvider } from '../../../core/ports.js';
import type { VmmConfinement } from '../confine/vmm.js';
import { pidAlive, processMentions } from '../process.js';
import { FILES, qemuArgs, type QemuSettings } from './args.js';
import { qmpCommand } from './qmp.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Host CPU kHz for tsc_early_khz: without it about half of TCG boots hang calibrating the TSC. */
export function hostKhz(cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')): number | undefined {
  const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo);
  return m?.[1] ? Math.round(Number(m[1]) * 1000) : undefined;
}

export class QemuProvider implements VmmProvider {
  readonly name = 'qemu';
  private readonly khz: number | undefined;

  constructor(
    private readonly bin: string,
    private readonly settings: QemuSettings,
    private readonly confine?: VmmConfinement,
  ) {
    this.khz = settings.accel === 'tcg' ? hostKhz() : undefined;
  }

  defaultCmdline(hasRoot: boolean): [string, string][] {
    const c: [string, string][] = [['console', 'ttyS0'], ['reboot', 't'], ['panic', '-1']];
    if (hasRoot) c.push(['root', '/dev/vda'], ['rw', '']);
    if (this.khz) c.push(['tsc_early_khz', String(this.khz)]);
    return c;
  }

  consolePath(dir: string): string {
    return `${dir}/${FILES.console}`;
  }

  async running(_uid: string, dir: string): Promise<number | undefined> {
    let pid: number;
    try {
      pid = Number((await readFile(`${dir}/${FILES.pid}`, 'utf8')).trim());
    } catch {
      return undefined;
    }
    // The pid must still be this VM's QEMU: pids are reused.
    return Number.isInteger(pid) && pid > 0 && pidAlive(pid) && processMentions(pid, dir) ? pid : undefined;
  }

  async start(l: Launch, log: Logger): Promise<number> {
    const args = [...qemuArgs(l, this.settings), ...(this.confine ? await this.confine.qemuArgs(l) : [])];
    log.debug({ bin: this.bin, args }, 'starting qemu');
    await rm(`${l.dir}/${FILES.pid}`, { force: true });
    await rm(`${l.dir}/${FILES.qmp}`, { force: true });
    await writeFile(`${l.dir}/${FILES.cmdline}`, JSON.stringify([this.bin, ...args]) + '\n');
    const out = openSync(`${l.dir}/${FILES.stdout}`, 'a');
    const err = openSync(`${l.dir}/${FILES.stderr}`, 'w');
    const taps: number[] = [];
    try {
      for (const n of l.nics) if (n.type === 'MACVTAP') taps.push(openSync(`/dev/tap${n.ifindex}`, 'r+'));
      // Detached and unref'd: the VM keeps running when matchlockd stops or restarts.
      const [cmd, argv] = this.confine ? await this.confine.command(l, this.bin, args) : [this.bin, args];
      const child = spawn(cmd, argv, { detached: true, stdio: ['ignore', out, err, ...taps] });
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
      child.unref();
      for (let i = 0; i < 50; i++) {
        const early = await Promise.race([exited.then((c) => `exited with ${c}`), spawnError.then((e) => e.message), sleep(100).then(() => undefined)]);
        if (early !== undefined) {
          const stderr = (await readFile(`${l.dir}/${FILES.stderr}`, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' ');
          throw new MatchlockError(ErrorCode.Internal, `qemu ${early}: ${stderr || 'no output'}`);
        }
        const pid = await this.running(l.uid, l.dir);
        if (pid !== undefined) return pid;
      }
      throw new MatchlockError(ErrorCode.Internal, `qemu did not write ${FILES.pid} within 5 s`);
    } finally {
      for (const fd of [out, err, ...taps]) closeSync(fd);
    }
  }

  async stop(uid: string, dir: string, timeoutMs: number, log: Logger): Promise<void> {
    await this.halt(uid, dir, timeoutMs, log);
    // Only once the VMM is gone: a cgroup with a live task cannot be removed.
    await this.confine?.release(uid);
  }

  private async halt(uid: string, dir: string, timeoutMs: number, log: Logger): Promise<void> {
    const qmp = `${dir}/${FILES.qmp}`;
    const gone = async (ms: number) => {
      const until = Date.now() + ms;
      while (Date.now() < until) {
        if ((await this.running(uid, dir)) === undefined) return true;
        await sleep(100);
      }
      return (await this.running(uid, dir)) === undefined;
    };
    const pid = await this.running(uid, dir);
    if (pid === undefined) return;
    try {
      await qmpCommand(qmp, 'system_powerdown');
      if (await gone(timeoutMs)) return;
      log.info({ timeoutMs }, 'guest did not power down; quitting qemu');
      await qmpCommand(qmp, 'quit');
      if (await gone(2000)) return;
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'qmp unavailable; killing qemu');
    }
    if ((await this.running(uid, dir)) === pid) process.kill(pid, 'SIGKILL');
    if (!(await gone(5000))) throw new MatchlockError(ErrorCode.Internal, `qemu pid ${pid} survived SIGKILL`);
  }
}
