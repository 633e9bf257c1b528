import assert from 'node:assert/strict';
import { create } from '@bufbuild/protobuf';
import { describe, it } from 'node:test';
import { fromGatewayJson, gatewayJson, parseGatewayBody } from '../../src/adapters/api/http/gateway-json.js';
import { MicroVMEventSchema, MicroVMEvent_Type, StopMicroVMRequestSchema } from '../../src/gen/services/matchlock/v1/lifecycle_pb.js';
import { MicroVMSpecSchema, NetworkInterface_IfaceType } from '../../src/gen/types/microvm_pb.js';

// The shapes pinned here are what grpc-gateway v2's default marshaler writes and reads, from
// its source (no Go toolchain here to run it): runtime/marshaler_registry.go, defaultMarshaler
// = JSONPb{MarshalOptions: {EmitUnpopulated: true}, UnmarshalOptions: {DiscardUnknown: true}},
// which flintlock keeps (internal/command/run/run.go: runtime.NewServeMux() with no options).
// protobuf-go encoding/protojson/encode.go: the EmitUnpopulated table (false, 0, "", [] for
// lists, {} for maps, null for message fields) and unpopulatedFieldRanger (fields in a oneof,
// proto3 optional ones too, are skipped). decode.go: DiscardUnknown drops unknown fields (and
// unknown enum names, which matchlock refuses instead: see fromGatewayJson).
describe('gateway JSON', () => {
  it('writes every field outside a oneof: zero scalars and enums, [] and {}, null for messages', () => {
    const spec = create(MicroVMSpecSchema, { id: 'a', interfaces: [{ deviceId: 'eth0', type: NetworkInterface_IfaceType.MACVTAP }] });
    assert.deepEqual(gatewayJson(MicroVMSpecSchema, spec), {
      id: 'a',
      namespace: '',
      labels: {},
      vcpu: 0,
      memoryInMb: 0,
      kernel: null,
      rootVolume: null,
      additionalVolumes: [],
      // guestMac, address and overrides are proto3 optional: left out when unset.
      interfaces: [{ deviceId: 'eth0', type: 'MACVTAP' }],
      metadata: {},
      createdAt: null,
      updatedAt: null,
      deletedAt: null,
      allowGuestAgent: false,
    });
  });

  it('keeps the well-known types in their own forms and 64-bit integers as strings', () => {
    const event = create(MicroVMEventSchema, { id: 7n, type: MicroVMEvent_Type.CREATED, time: { seconds: 1n, nanos: 0 }, uid: 'u' });
    const json = gatewayJson(MicroVMEventSchema, event);
    assert.equal(json.id, '7');
    assert.equal(json.time, '1970-01-01T00:00:01Z');
    assert.equal(json.microvm, null);
    assert.equal(json.state, 'PENDING');
    assert.equal(json.stateChanged, false);
  });

  it('reads unknown fields as absent, refuses an enum name it does not know, and reads an empty body as the empty message', () => {
    const spec = fromGatewayJson(MicroVMSpecSchema, { id: 'a', futureField: { x: 1 }, interfaces: [{ deviceId: 'eth0', type: 'TAP', futureFlag: true }], kernel: { filename: 'k', future: [1] } }, 'a JSON MicroVMSpec');
    assert.equal(spec.id, 'a');
    assert.equal(spec.interfaces[0]?.type, NetworkInterface_IfaceType.TAP);
    assert.equal(spec.kernel?.filename, 'k');
    // grpc-gateway would drop it and make the interface a MACVTAP (the zero value).
    assert.throws(
      () => fromGatewayJson(MicroVMSpecSchema, { id: 'a', interfaces: [{ deviceId: 'eth0', type: 'TAPP' }] }, 'a JSON MicroVMSpec'),
      /^MatchlockError: interfaces\[0\]\.type: must be one of MACVTAP, TAP \(or its number\), not "TAPP"$/,
    );
    assert.deepEqual(parseGatewayBody(Buffer.from(' \t\r\n'), 'x'), {});
    // Blank as JSON (RFC 8259 section 2) and Go's decoder take it: U+00A0 and the other spaces
    // JavaScript's trim() takes are no JSON whitespace.
    for (const text of ['\u00a0', ' \u3000\n', '\ufeff']) assert.throws(() => parseGatewayBody(Buffer.from(text), 'a stop'), /^MatchlockError: body: must be a stop \(/, JSON.stringify(text));
    assert.equal(fromGatewayJson(StopMicroVMRequestSchema, {}, 'x').force, false);
    assert.throws(() => fromGatewayJson(StopMicroVMRequestSchema, { force: 'yes' }, 'a stop'), /^MatchlockError: body: must be a stop \(.*force/);
    assert.throws(() => fromGatewayJson(StopMicroVMRequestSchema, 5, 'a stop'), /^MatchlockError: body: must be a stop, a JSON object, not number$/);
  });
});
