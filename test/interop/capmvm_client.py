"""An independent flintlock client: Python grpcio with stubs generated from the reference protos.

Drives one MicroVM the way CAPMVM does (create, get, list, delete, poll until not found) and
prints a JSON report; the TypeScript test asserts on it.
Usage: capmvm_client.py <stubs dir> <host:port> [token]
"""
import base64
import json
import sys
import time

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from services.microvm.v1alpha1 import microvms_pb2, microvms_pb2_grpc  # noqa: E402
from fltypes import microvm_pb2  # noqa: E402


def b64(text):
    return base64.b64encode(text.encode()).decode()


def main():
    target = sys.argv[2]
    token = sys.argv[3] if len(sys.argv) > 3 else None
    md = [("authorization", "Basic " + b64(token))] if token else []
    stub = microvms_pb2_grpc.MicroVMStub(grpc.insecure_channel(target))
    report = {}

    spec = microvm_pb2.MicroVMSpec(
        id="capmvm-cp-abc12",
        namespace="capmvm-ns",
        labels={"cluster.x-k8s.io/cluster-name": "mycluster", "cluster-name": "mycluster"},
        vcpu=2,
        memory_in_mb=2048,
        kernel=microvm_pb2.Kernel(
            image="ghcr.io/liquidmetal-dev/flintlock-kernel:5.10.77",
            filename="boot/vmlinux",
            add_network_config=True,
        ),
        root_volume=microvm_pb2.Volume(
            id="root",
            is_read_only=False,
            source=microvm_pb2.VolumeSource(container_source="ghcr.io/liquidmetal-dev/capmvm-k8s-os:1.23.5"),
        ),
        additional_volumes=[
            microvm_pb2.Volume(
                id="modules",
                is_read_only=False,
                mount_point="/lib/modules/5.10.77",
                source=microvm_pb2.VolumeSource(container_source="ghcr.io/liquidmetal-dev/flintlock-kernel-modules:5.10.77"),
            )
        ],
        interfaces=[
            microvm_pb2.NetworkInterface(device_id="eth1", type=microvm_pb2.NetworkInterface.MACVTAP),
            microvm_pb2.NetworkInterface(device_id="eth2", type=microvm_pb2.NetworkInterface.TAP, guest_mac="02:00:00:00:00:2a"),
        ],
        metadata={
            "user-data": b64("#cloud-config\nruncmd:\n  - echo hello\n"),
            "vendor-data": b64("#cloud-config\n"),
            "meta-data": b64("local_hostname: capmvm-cp-abc12\nplatform: liquid_metal\nvm_host: host-1\n"),
        },
        provider="",
    )
    # CAPMVM also sends a uid it does not own; the server must ignore it.
    spec.uid = "client-chosen"
    created = stub.CreateMicroVM(microvms_pb2.CreateMicroVMRequest(microvm=spec), metadata=md).microvm
    uid = created.spec.uid
    report["create"] = {
        "uid": uid,
        "state": microvm_pb2.MicroVMStatus.MicroVMState.Name(created.status.state),
        "version": created.version,
        "provider": created.spec.provider,
        "labels": dict(created.spec.labels),
    }

    got = stub.GetMicroVM(microvms_pb2.GetMicroVMRequest(uid=uid), metadata=md).microvm
    report["get"] = {
        "uid": got.spec.uid,
        "name": got.spec.id,
        "namespace": got.spec.namespace,
        "meta_data": base64.b64decode(got.spec.metadata["meta-data"]).decode(),
        "user_data": base64.b64decode(got.spec.metadata["user-data"]).decode(),
        "interfaces": [[i.device_id, microvm_pb2.NetworkInterface.IfaceType.Name(i.type), i.guest_mac] for i in got.spec.interfaces],
        "mount_point": got.spec.additional_volumes[0].mount_point,
        "has_created_at": got.spec.HasField("created_at"),
    }

    listed = stub.ListMicroVMs(microvms_pb2.ListMicroVMsRequest(namespace="capmvm-ns"), metadata=md).microvm
    report["list_ns"] = [m.spec.uid for m in listed]
    listed_all = stub.ListMicroVMs(microvms_pb2.ListMicroVMsRequest(namespace=""), metadata=md).microvm
    report["list_all"] = [m.spec.uid for m in listed_all]
    by_name = stub.ListMicroVMs(microvms_pb2.ListMicroVMsRequest(namespace="capmvm-ns", name="capmvm-cp-abc12"), metadata=md).microvm
    report["list_name"] = [m.spec.uid for m in by_name]
    streamed = list(stub.ListMicroVMsStream(microvms_pb2.ListMicroVMsRequest(namespace="capmvm-ns"), metadata=md))
    report["stream"] = [m.microvm.spec.uid for m in streamed]

    stub.DeleteMicroVM(microvms_pb2.DeleteMicroVMRequest(uid=uid), metadata=md)
    stub.DeleteMicroVM(microvms_pb2.DeleteMicroVMRequest(uid=uid), metadata=md)
    deadline = time.time() + 20
    report["after_delete"] = None
    while time.time() < deadline:
        try:
            stub.GetMicroVM(microvms_pb2.GetMicroVMRequest(uid=uid), metadata=md)
        except grpc.RpcError as err:
            report["after_delete"] = {"code": err.code().name, "details": err.details()}
            break
        time.sleep(0.2)
    report["refusals"] = refusals(stub, spec, md)
    print(json.dumps(report))


def refusals(stub, good, md):
    """Hostile requests: the code and the size of the message grpcio hands back for each."""
    long_ascii = "k" * 20000
    long_wide = "\u00e9" * 20000  # 2 bytes in UTF-8, 6 once percent-encoded in grpc-message
    cases = {}

    def create(name, change):
        spec = microvm_pb2.MicroVMSpec()
        spec.CopyFrom(good)
        change(spec)
        try:
            stub.CreateMicroVM(microvms_pb2.CreateMicroVMRequest(microvm=spec), metadata=md)
            cases[name] = {"code": "OK", "details_len": 0}
        except grpc.RpcError as err:
            cases[name] = {"code": err.code().name, "details_len": len(err.details() or "")}

    def get(name, uid):
        try:
            stub.GetMicroVM(microvms_pb2.GetMicroVMRequest(uid=uid), metadata=md)
            cases[name] = {"code": "OK", "details_len": 0}
        except grpc.RpcError as err:
            cases[name] = {"code": err.code().name, "details_len": len(err.details() or ""), "details": (err.details() or "")[:300]}

    create("label key", lambda s: s.labels.__setitem__(long_ascii, "v"))
    create("label key wide", lambda s: s.labels.__setitem__(long_wide, "v"))
    create("metadata key", lambda s: s.metadata.__setitem__(long_ascii, "eA=="))
    create("cmdline key", lambda s: s.kernel.cmdline.__setitem__(long_wide, "1"))
    create("name", lambda s: setattr(s, "id", long_wide))
    create("kernel image", lambda s: setattr(s.kernel, "image", long_ascii))
    get("uid huge", long_wide)
    get("uid not crockford", "01ARZ3NDEKTSV4RRFFQ69G5FAU")
    return cases


if __name__ == "__main__":
    main()
