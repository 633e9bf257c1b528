import { StringDecoder } from 'node:string_decoder';
import { connectConsole } from '../adapters/api/console-client.js';
import type { ConnectOptions } from './client.js';
import type { Io } from './vm.js';

/** The byte that detaches `vm console`: Ctrl-] (GS, 0x1d), as virsh console and telnet use. */
export const DETACH_BYTE = 0x1d;

/** `vm logs`: the console log's tail (or all of it), then new output with `follow` until Ctrl-C. */
export async function printConsole(o: ConnectOptions, uid: string, opts: { tail?: number | undefined; follow: boolean }, io: Io): Promise<void> {
  const c = connectConsole(o);
  const decoder = new StringDecoder('utf8');
  const ac = new AbortController();
  const interrupt = () => ac.abort();
  if (opts.follow) process.once('SIGINT', interrupt);
  try {
    await c.stream(uid, opts, (d) => io.out(decoder.write(Buffer.from(d))), ac.signal);
    const rest = decoder.end();
    if (rest) io.out(rest);
  } finally {
    process.off('SIGINT', interrupt);
    c.close();
  }
}

/**
 * `vm console`: the terminal in raw mode, keys to the guest's serial input and its output to
 * stdout, until Ctrl-] (or the daemon ends the stream: VM deleted, VMM stopped).
 */
export async function attachConsole(o: ConnectOptions, uid: string, io: Io, stdin: NodeJS.ReadStream = process.stdin, stdout: NodeJS.WriteStream = process.stdout): Promise<void> {
  const c = connectConsole(o);
  const raw = stdin.isTTY;
  const session = c.attach(
    uid,
    (d) => stdout.write(d),
    () => io.err(`Connected to the console of ${uid}. Detach with Ctrl-] (^]).\r\n`),
  );
  const onKeys = (chunk: Buffer) => {
    const at = chunk.indexOf(DETACH_BYTE);
    if (at < 0) {
      session.write(chunk);
      return;
    }
    if (at > 0) session.write(chunk.subarray(0, at));
    io.err('\r\nDetached.\r\n');
    session.close();
  };
  if (raw) stdin.setRawMode(true);
  stdin.on('data', onKeys);
  stdin.resume();
  try {
    await session.done;
  } finally {
    stdin.off('data', onKeys);
    stdin.pause();
    if (raw) stdin.setRawMode(false);
    c.close();
  }
}
