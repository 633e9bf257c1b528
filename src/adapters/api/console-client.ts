import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';
import { basicAuthHeader } from './auth.js';
import { credentials, streamEnded, type ConnectOptions } from './client.js';
import { dialAddress } from '../../core/endpoint.js';
import { serviceDefinition } from './grpc/service-def.js';
import { AttachConsoleRequestSchema, Console as ConsoleService, StreamConsoleRequestSchema, type ConsoleOutput } from '../../gen/services/matchlock/v1/console_pb.js';

/** An open interactive console: `write` sends to the guest's serial input, `close` detaches. */
export interface AttachedConsole {
  write(data: Uint8Array): void;
  /**
   * No more input: half-closes the stream. The daemon passes on every byte written before it,
   * then detaches and ends the stream, which resolves `done`.
   */
  end(): void;
  close(): void;
  /** Resolves when the daemon ends the stream (VM gone, VMM stopped); rejects with its error. */
  done: Promise<void>;
}

/** A client of matchlock.v1.Console (proto/services/matchlock/v1/console.proto). Streams carry no deadline. */
export function connectConsole(o: ConnectOptions) {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(ConsoleService), 'Console');
  // Dialled as every other client dials (`:port`, 0.0.0.0 and [::] on loopback, as Go does).
  const client = new Ctor(dialAddress(o.host), credentials(o)) as unknown as grpc.Client & Record<string, (...a: unknown[]) => grpc.ClientReadableStream<ConsoleOutput> & grpc.ClientDuplexStream<unknown, ConsoleOutput>>;
  const md = () => {
    const m = new grpc.Metadata();
    if (o.token) m.set('authorization', basicAuthHeader(o.token));
    return m;
  };
  return {
    close: () => client.close(),
    /** Calls `onData` with each chunk; resolves when the stream ends (at once without follow). */
    async stream(uid: string, opts: { tail?: number | undefined; follow: boolean }, onData: (d: Uint8Array) => void, signal?: AbortSignal): Promise<void> {
      const call = client.streamConsole?.(create(StreamConsoleRequestSchema, { uid, tail: opts.tail, follow: opts.follow }), md());
      if (!call) throw new Error('streamConsole missing');
      signal?.addEventListener('abort', () => call.cancel(), { once: true });
      await new Promise<void>((resolve, reject) => {
        call.on('data', (m: ConsoleOutput) => onData(m.data));
        call.on('end', () => resolve());
        call.on('error', (err: grpc.ServiceError) => (err.code === grpc.status.CANCELLED && signal?.aborted ? resolve() : reject(streamEnded(err, o.host))));
      });
    },
    attach(uid: string, onData: (d: Uint8Array) => void, onAttached?: () => void): AttachedConsole {
      const call = client.attachConsole?.(md());
      if (!call) throw new Error('attachConsole missing');
      let closed = false;
      let attached = false;
      const done = new Promise<void>((resolve, reject) => {
        call.on('data', (m: ConsoleOutput) => {
          // The server's first message, empty, says the console is connected.
          if (!attached) {
            attached = true;
            onAttached?.();
          }
          if (m.data.length) onData(m.data);
        });
        call.on('end', () => resolve());
        call.on('error', (err: grpc.ServiceError) => (err.code === grpc.status.CANCELLED && closed ? resolve() : reject(streamEnded(err, o.host))));
      });
      call.write(create(AttachConsoleRequestSchema, { uid }));
      return {
        write: (data) => void call.write(create(AttachConsoleRequestSchema, { data })),
        end: () => {
          closed = true;
          call.end();
        },
        close: () => {
          closed = true;
          call.cancel();
        },
        done,
      };
    },
  };
}
