"""ListMicroVMs pages seen from Python grpcio, with stubs of either schema.

Usage: paging_client.py new|old <stubs dir> <host:port>
  new: stubs from matchlock's protos; pages through every namespace with page_size and
       page_token, then sends a token with another namespace.
  old: stubs from flintlock's reference protos (no paging fields); lists as flintlock's clients
       do, then sends page_size by hand (field 1000) and reads the answer, next_page_token and
       all, with the old schema.
Prints a JSON report; the TypeScript test asserts on it.
"""
import json
import sys

sys.path.insert(0, sys.argv[2])
import grpc  # noqa: E402
from services.microvm.v1alpha1 import microvms_pb2, microvms_pb2_grpc  # noqa: E402

LIST = "/microvm.services.api.v1alpha1.MicroVM/ListMicroVMs"


def new(channel):
    stub = microvms_pb2_grpc.MicroVMStub(channel)
    report = {"pages": [], "uids": []}
    token = ""
    while True:
        res = stub.ListMicroVMs(microvms_pb2.ListMicroVMsRequest(namespace="", page_size=7, page_token=token))
        report["pages"].append(len(res.microvm))
        report["uids"] += [m.spec.uid for m in res.microvm]
        token = res.next_page_token
        if not token:
            break
        last = token
    try:
        stub.ListMicroVMs(microvms_pb2.ListMicroVMsRequest(namespace="other", page_size=7, page_token=last))
        report["other_namespace"] = None
    except grpc.RpcError as err:
        report["other_namespace"] = {"code": err.code().name, "details": err.details()}
    return report


def old(channel):
    stub = microvms_pb2_grpc.MicroVMStub(channel)
    assert "page_size" not in microvms_pb2.ListMicroVMsRequest.DESCRIPTOR.fields_by_name
    report = {"all": [m.spec.uid for m in stub.ListMicroVMs(microvms_pb2.ListMicroVMsRequest(namespace="")).microvm]}
    # page_size = 7 as field 1000 (varint): tag 8000 is 0xc0 0x3e.
    raw = microvms_pb2.ListMicroVMsRequest(namespace="").SerializeToString() + b"\xc0\x3e\x07"
    call = channel.unary_unary(LIST, request_serializer=lambda b: b, response_deserializer=microvms_pb2.ListMicroVMsResponse.FromString)
    page = call(raw)
    report["paged"] = [m.spec.uid for m in page.microvm]
    # The token travels as a field this schema does not know: kept aside, not an error.
    report["paged_has_unknown"] = len(page.SerializeToString()) > len(microvms_pb2.ListMicroVMsResponse(microvm=page.microvm).SerializeToString())
    return report


def main():
    channel = grpc.insecure_channel(sys.argv[3])
    print(json.dumps(new(channel) if sys.argv[1] == "new" else old(channel)))


main()
