import { create } from '@bufbuild/protobuf';
import { drained } from '../drain.js';
import type * as grpc from '@grpc/grpc-js';
import type { Socket } from 'node:net';
import { ErrorCode, MatchlockError } from '../../../core/errors.js';
import type { Logger } from '../../../core/ports.js';
import {
  Console as ConsoleServiceDesc,
  ConsoleOutputSchema,
  type AttachConsoleRequest,
  type StreamConsoleRequest,
} from '../../../gen/services/matchlock/v1/console_pb.js';
import { ConsoleAttachments, followFile, readTail } from '../../vmm/console.js';
import { serviceDefinition } from './service-def.js';

/** What the console service needs to know of one VM. */
export interface ConsoleTarget {
  /** The console log on the host. */
  log: string;
  /** The VM's provider, named in errors. */
  provider: string;
  /** Where serial input goes; undefined when the provider takes none. */
  input?: { kind: 'unix-socket'; path: string } | undefined;
}

/** Finds a VM's console. Throws NotFound for a uid no record has. */
export type ConsoleLocator = (uid: string) => ConsoleTarget;

/**
 * Why a console stream ends when the daemon drains: Unavailable (gRPC UNAVAILABLE, 14), which
 * gRPC's status code guide gives for a service that is going away and may be tried again later.
 */
const STOPPING = new MatchlockError(ErrorCode.Unavailable, 'matchlockd is stopping: the console stream ended; open it again once matchlockd is back');

/** Largest chunk of console output in one message. */
const CHUNK = 32 * 1024;

type Fail = (method: string, err: unknown) => grpc.ServiceError;

/** Writes with grpc-js's flow control: waits for 'drain' when its buffer is full. */
async function send(call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>, data: Buffer, signal: AbortSignal): Promise<void> {
  for (let i = 0; i < data.length; i += CHUNK) {
    if (signal.aborted) return;
    if (!call.write(create(ConsoleOutputSchema, { data: data.subarray(i, i + CHUNK) }))) await drained(call, signal);
  }
}

/**
 * The `matchlock.v1.Console` service (proto/services/matchlock/v1/console.proto) on a grpc-js
 * server (`door`: the token-checking view of it). Streams end when the client cancels, when the
 * VM's record is gone, (attach) when the VMM closes the console, or with UNAVAILABLE when
 * `shutdown` aborts (the daemon drains: an open stream must not hold up its stop).
 */
export function addConsoleService(door: Pick<grpc.Server, 'addService'>, locate: ConsoleLocator, fail: Fail, logger: Logger, shutdown?: AbortSignal): void {
  const attachments = new ConsoleAttachments();
  /** Aborts `ac` once the VM's record is gone; returns the stop function. */
  const whileExists = (uid: string, ac: AbortController) => {
    const t = setInterval(() => {
      try {
        locate(uid);
      } catch {
        ac.abort();
      }
    }, 1000);
    t.unref();
    return () => clearInterval(t);
  };

  door.addService(serviceDefinition(ConsoleServiceDesc, true), {
    streamConsole: (call: grpc.ServerWritableStream<StreamConsoleRequest, unknown>) => {
      const ac = new AbortController();
      call.on('cancelled', () => ac.abort());
      call.on('close', () => ac.abort());
      const stopping = () => ac.abort(STOPPING);
      shutdown?.addEventListener('abort', stopping, { once: true });
      void (async () => {
        let stop = () => undefined as void;
        try {
          if (shutdown?.aborted) throw STOPPING;
          const req = call.request;
          if (req.uid === '') throw new MatchlockError(ErrorCode.InvalidArgument, 'uid: must not be empty', { field: 'uid' });
          const target = locate(req.uid);
          const { data, offset } = await readTail(target.log, req.tail);
          await send(call, data, ac.signal);
          if (req.follow && !ac.signal.aborted) {
            stop = whileExists(req.uid, ac);
            await followFile(target.log, offset, ac.signal, (d) => send(call, d, ac.signal));
          }
          if (ac.signal.reason === STOPPING) throw STOPPING;
          call.end();
        } catch (err) {
          call.emit('error', fail('StreamConsole', err));
        } finally {
          stop();
          shutdown?.removeEventListener('abort', stopping);
        }
      })();
    },
    attachConsole: (call: grpc.ServerDuplexStream<AttachConsoleRequest, unknown>) => {
      const ac = new AbortController();
      let sock: Socket | undefined;
      let pending: Buffer[] | undefined = [];
      let started = false;
      let stop = () => undefined as void;
      let finished = false;
      const stopping = () => finish(STOPPING);
      const finish = (err?: unknown) => {
        if (finished) return;
        finished = true;
        shutdown?.removeEventListener('abort', stopping);
        stop();
        ac.abort();
        sock?.destroy();
        if (err !== undefined) call.emit('error', fail('AttachConsole', err));
        else call.end();
      };
      if (shutdown?.aborted) {
        finish(STOPPING);
        return;
      }
      shutdown?.addEventListener('abort', stopping, { once: true });
      call.on('cancelled', () => finish());
      call.on('error', () => finish());
      // The client's half-close (no more input): what it sent is flushed to the serial port
      // before the console is let go; destroy alone would drop what the socket still buffers.
      call.on('end', () => (sock && !finished ? sock.end(() => finish()) : finish()));
      call.on('data', (req: AttachConsoleRequest) => {
        if (req.data.length) {
          if (pending) pending.push(Buffer.from(req.data));
          else sock?.write(req.data);
        }
        if (started) return;
        started = true;
        void (async () => {
          try {
            if (req.uid === '') throw new MatchlockError(ErrorCode.InvalidArgument, 'uid: the first message must name the VM', { field: 'uid' });
            const target = locate(req.uid);
            if (!target.input) throw new MatchlockError(ErrorCode.FailedPrecondition, `provider ${target.provider} takes no console input; use StreamConsole (matchlock vm logs) to read the console of ${req.uid}`);
            const s = await attachments.attach(req.uid, target.input.path);
            if (finished) {
              s.destroy();
              return;
            }
            sock = s;
            // An empty first message: the client may now say it is connected.
            call.write(create(ConsoleOutputSchema, {}));
            stop = whileExists(req.uid, ac);
            ac.signal.addEventListener('abort', () => finish(), { once: true });
            s.on('data', (d: Buffer) => {
              // Backpressure: the guest's serial port waits while the client is slow.
              s.pause();
              void send(call, d, ac.signal).then(() => s.resume());
            });
            s.on('error', (e) => logger.debug({ uid: req.uid, err: e.message }, 'console socket error'));
            s.on('close', () => finish());
            for (const b of pending ?? []) s.write(b);
            pending = undefined;
            logger.info({ uid: req.uid }, 'console attached');
          } catch (err) {
            finish(err);
          }
        })();
      });
    },
  });
}
