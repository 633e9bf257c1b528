# ListMicroVMs in one answer (no page_size, as flintlock's clients ask) from grpcio, the Python
# gRPC client, against two servers in turn: the List as a client built on gRPC's C core receives
# it. Unlike grpc-js's client, whose HTTP/2 receive window stays at 64 KiB unless it is set,
# gRPC's C core (and grpc-go, CAPMVM's) widen theirs by bandwidth-delay probing, so a large answer
# is not paced by window updates. The answer stays bytes: decoding is the client's cost.
#   /usr/bin/python3 bench/list-grpcio.py <target A> <target B> <rounds>
# Prints one line per target: the answer's size in bytes, then the ms of each round. Exits 3,
# saying why on stderr, when this Python has no grpc module.
import sys
import time

try:
    import grpc
except ImportError as err:
    print(f'no grpc module: {err}', file=sys.stderr)
    sys.exit(3)

LIST = '/microvm.services.api.v1alpha1.MicroVM/ListMicroVMs'


def main() -> None:
    targets, rounds = sys.argv[1:3], int(sys.argv[3])
    calls = []
    for target in targets:
        channel = grpc.insecure_channel(target, options=[('grpc.max_receive_message_length', -1)])
        calls.append(channel.unary_unary(LIST, request_serializer=None, response_deserializer=None))
    times = [[] for _ in targets]
    size = [0 for _ in targets]
    for _ in range(rounds):
        for k, call in enumerate(calls):
            start = time.perf_counter()
            size[k] = len(call(b'', timeout=120))
            times[k].append((time.perf_counter() - start) * 1000)
    for k in range(len(targets)):
        print(size[k], ' '.join(f'{t:.3f}' for t in times[k]))


main()
