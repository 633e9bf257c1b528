import { fromBinary, toBinary, type DescMessage, type DescService, type MessageShape } from '@bufbuild/protobuf';
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';
import type { MatchlockError } from '../../../core/errors.js';
import { wireEntryLimits } from '../entry-limits.js';

/** Marks response bytes whose owner wants to know when grpc-js has its own copy of them. */
export const COPIED = Symbol('copied');

/** Response bytes lent to grpc-js: `[COPIED]` runs once grpc-js has copied them. */
export type Lent = Uint8Array & { [COPIED]?: () => void };

/**
 * A request refused before it was decoded. grpc-js answers a deserializer that throws with
 * INTERNAL, so the refusal travels as the request and the server's handler wrapper answers it
 * with its own status (INVALID_ARGUMENT naming the field).
 */
export class Refused {
  constructor(readonly error: MatchlockError) {}
}

/**
 * A grpc-js service definition built from a protobuf-es service descriptor, so grpc-js moves
 * bytes and protobuf-es owns the encoding. Used by both the server and the CLI's client.
 * A response given as bytes (a Uint8Array) is sent as it is: the server answers Get and List
 * from records the store keeps encoded. With `server`, a unary or server-streaming request
 * whose lists are over their limits (entry-limits.ts) is not decoded: it arrives as a Refused.
 */
export function serviceDefinition(service: DescService, server = false): ServiceDefinition {
  const def: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    const codec = <D extends DescMessage>(desc: D) => ({
      serialize: (msg: MessageShape<D> | Uint8Array) => {
        if (!(msg instanceof Uint8Array)) return Buffer.from(toBinary(desc, msg));
        // grpc-js copies what this returns behind the message header before it runs any
        // other code, so the bytes may be reused from the next microtask on.
        const copied = (msg as Lent)[COPIED];
        if (copied) queueMicrotask(copied);
        return Buffer.from(msg.buffer, msg.byteOffset, msg.byteLength);
      },
      deserialize: (buf: Buffer) => fromBinary(desc, buf),
    });
    const input = codec(m.input);
    const output = codec(m.output);
    const streamsRequests = m.methodKind === 'client_streaming' || m.methodKind === 'bidi_streaming';
    const requestDeserialize = server && !streamsRequests ? (buf: Buffer) => {
      const refused = wireEntryLimits(m.input, buf);
      return refused ? new Refused(refused) : fromBinary(m.input, buf);
    } : input.deserialize;
    def[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      originalName: m.name,
      requestStream: streamsRequests,
      responseStream: m.methodKind === 'server_streaming' || m.methodKind === 'bidi_streaming',
      requestSerialize: input.serialize as (v: unknown) => Buffer,
      requestDeserialize,
      responseSerialize: output.serialize as (v: unknown) => Buffer,
      responseDeserialize: output.deserialize,
    };
  }
  return def;
}
