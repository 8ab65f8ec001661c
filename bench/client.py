"""A closed-loop client for the serving bench, in a process of its own: ``--threads`` threads,
each with its own keep-alive connection (REST) or channel (gRPC), send one-example predicts
for ``--seconds``. The same client for both protocols, so that they compare on equal terms.
Prints one JSON line: requests/s, p50, p99, failed, and each answer's status counted.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

from harness.rest_client import RestClient


def _rest(port: int, model: str, body: bytes, key: str):
    client = RestClient(port)
    path = f"/v1/models/{model}:predict"

    def call() -> str:
        status, _, _ = client.call("POST", path, body)
        return str(status)
    return call, client.close


def _grpc(port: int, model: str, body: bytes, key: str):
    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    array = np.asarray(json.loads(body)["instances"], np.float32)
    request.inputs[key].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=array.ravel().tolist(),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": n} for n in array.shape])))

    def call() -> str:
        try:
            stub.Predict(request, timeout=30)
            return "OK"
        except grpc.RpcError as err:
            return err.code().name
    return call, channel.close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--protocol", choices=("rest", "grpc"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--body", required=True, help="a REST predict body; over gRPC its "
                        "instances are sent as the tensor --input")
    parser.add_argument("--input", default="features", help="the signature's input key")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    connect = _rest if args.protocol == "rest" else _grpc
    latencies: list[list[float]] = [[] for _ in range(args.threads)]
    statuses: list[dict[str, int]] = [{} for _ in range(args.threads)]
    deadline = [0.0]
    start = threading.Barrier(args.threads, action=lambda: deadline.__setitem__(
        0, time.monotonic() + args.seconds))  # once every thread is connected

    def loop(index: int) -> None:
        call, close = connect(args.port, args.model, args.body.encode(), args.input)
        call()  # connected and warm before the clock starts
        start.wait()
        while time.monotonic() < deadline[0]:
            began = time.perf_counter()
            status = call()
            latencies[index].append(time.perf_counter() - began)
            statuses[index][status] = statuses[index].get(status, 0) + 1
        close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = sorted(x for per in latencies for x in per)
    counts: dict[str, int] = {}
    for per in statuses:
        for status, n in per.items():
            counts[status] = counts.get(status, 0) + n
    ok = counts.get("200", 0) + counts.get("OK", 0)
    print(json.dumps({"event": "client", "requests_per_s": len(every) / args.seconds,
                      "p50": every[len(every) // 2], "p99": every[int(len(every) * 0.99)],
                      "failed": len(every) - ok, "statuses": counts}), flush=True)


if __name__ == "__main__":
    main()
