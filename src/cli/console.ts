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
 * How long `vm console` keeps printing the guest's output once its input ends, by default: the
 * answer to the last command still comes. socat waits 0.5 s (its -t) after EOF on one side.
 */
export const EOF_LINGER_MS = 500;

/**
 * `vm console`: the terminal in raw mode, keys to the guest's serial input and its output to
 * stdout, until Ctrl-] (or the daemon ends the stream: VM deleted, VMM stopped). Input that
 * ends (a pipe, a file) detaches `lingerMs` later, so one client does not hold the console's
 * single attach slot forever.
 */
export async function attachConsole(o: ConnectOptions, uid: string, io: Io, stdin: NodeJS.ReadStream = process.stdin, stdout: NodeJS.WriteStream = process.stdout, lingerMs = EOF_LINGER_MS): Promise<void> {
  const c = connectConsole(o);
  const raw = stdin.isTTY;
  // Counted from the attach, not from the end of input: input that ends before the console is
  // connected is still sent, and its answer still printed.
  let attached = false;
  let ended = false;
  let linger: NodeJS.Timeout | undefined;
  const lingerIfEnded = () => {
    if (!attached || !ended || linger) return;
    linger = setTimeout(() => {
      io.err('\r\nDetached: end of input.\r\n');
      session.end();
    }, lingerMs);
  };
  const session = c.attach(
    uid,
    (d) => stdout.write(d),
    () => {
      attached = true;
      io.err(`Connected to the console of ${uid}. Detach with Ctrl-] (^]).\r\n`);
      lingerIfEnded();
    },
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
  const onEnd = () => {
    ended = true;
    lingerIfEnded();
  };
  if (raw) stdin.setRawMode(true);
  stdin.on('data', onKeys);
  stdin.once('end', onEnd);
  stdin.resume();
  try {
    await session.done;
  } finally {
    clearTimeout(linger);
    stdin.off('data', onKeys);
    stdin.off('end', onEnd);
    stdin.pause();
    if (raw) stdin.setRawMode(false);
    c.close();
  }
}
