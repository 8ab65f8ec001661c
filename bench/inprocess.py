"""The in-process limit for the serving bench: the same ``Session.run`` a predict request makes,
called directly from ``--threads`` threads for ``--seconds``, with no HTTP, JSON or handles.
It also times the whole REST ``predict`` (parse, handle, run, render) single threaded, to split a
request's time, and from ``--threads`` threads (the limit of a REST predict without HTTP), and
the gRPC service's ``Predict`` (proto to array, run, array to proto). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from consumer import loader
from consumer.loop import Config
from consumer.serving.calls import Calls, Target
from consumer.serving.models import Models, ServedModel
from consumer.serving.rest import RestApi
from shared import layout


class _Context:
    """The part of a gRPC servicer context a Predict reads, for a call with no deadline."""

    @staticmethod
    def time_remaining() -> None:
        return None

    @staticmethod
    def abort(code, details: str):
        raise RuntimeError(f"{code}: {details}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export-dir", type=Path, required=True)
    parser.add_argument("--body", required=True, help="the predict request body the clients send")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    config = Config(export_dir=args.export_dir, work_dir=Path(tempfile.mkdtemp()),
                    source="savedmodel", mode=loader.SERVE)
    model = ServedModel("mlp", config)  # its loop is never started: one version, loaded here
    model.manager.add(loader.load(layout.latest_savedmodel(args.export_dir), loader.SERVE))
    models = Models()
    models.add(model)
    live = model.manager.live
    signature = live.signatures["serving_default"]
    features = next(iter(signature.inputs.values()))
    rows = json.loads(args.body)["instances"]
    feeds = {features.name: np.asarray(rows, features.dtype)}
    fetches = signature.fetches()

    def timed(call, seconds: float) -> list[float]:
        took, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            call()
            took.append(time.perf_counter() - started)
        return took

    run_once = lambda: live.run(feeds, fetches)  # noqa: E731 - the server's own callable
    counts = [0] * args.threads

    def worker(index: int) -> None:
        counts[index] = len(timed(run_once, args.seconds))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    runs_per_s = sum(counts) / args.seconds
    api, target = RestApi(Calls(models)), Target("mlp")
    body = args.body.encode()
    run_alone = timed(run_once, min(2.0, args.seconds / 2))
    predict = timed(lambda: api.predict(target, body), min(2.0, args.seconds / 2))
    rpc, request = _grpc_predict(models, rows)
    grpc_predict = timed(lambda: rpc.Predict(request, _Context()), min(2.0, args.seconds / 2))

    def api_worker(index: int) -> None:  # the whole REST predict, without HTTP
        counts[index] = len(timed(lambda: api.predict(target, body), args.seconds))

    threads = [threading.Thread(target=api_worker, args=(i,)) for i in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"event": "inprocess", "requests_per_s": runs_per_s,
                      "api_requests_per_s": sum(counts) / args.seconds,
                      "session_run_s": statistics.median(run_alone),
                      "api_predict_s": statistics.median(predict),
                      "grpc_predict_s": statistics.median(grpc_predict)}), flush=True)
    model.manager.close()


def _grpc_predict(models: Models, rows: list):
    """The gRPC service and a PredictRequest for ``rows``: a call's work without the wire."""
    from consumer.serving.metrics import ServingMetrics
    from consumer.serving.protos import to_proto
    from consumer.serving.rpc import PredictionService
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mlp"
    request.inputs["features"].CopyFrom(to_proto(np.asarray(rows, np.float32)))
    return PredictionService(Calls(models), ServingMetrics()), request


if __name__ == "__main__":
    main()
