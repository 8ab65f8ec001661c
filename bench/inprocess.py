"""The in-process limit for the serving bench: the same ``Session.run`` a predict request makes,
called directly from ``--threads`` threads for ``--seconds``, with no HTTP, JSON or handles.
It also times the whole ``Api.predict`` (parse, handle, run, render) once per call, single
threaded, to split a request's time. Prints one JSON line.
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
    api, target = RestApi(Calls(models)), Target("mlp")
    body = args.body.encode()
    run_alone = timed(run_once, min(2.0, args.seconds))
    predict = timed(lambda: api.predict(target, body), min(2.0, args.seconds))
    print(json.dumps({"event": "inprocess", "requests_per_s": sum(counts) / args.seconds,
                      "session_run_s": statistics.median(run_alone),
                      "api_predict_s": statistics.median(predict)}), flush=True)
    model.manager.close()


if __name__ == "__main__":
    main()
