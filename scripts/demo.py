"""``make demo``: a producer, an evaluating consumer and a serving consumer as real processes.

It starts both consumers on an empty directory, then runs the producer on the linear model,
exporting a SavedModel every 200 steps. It prints each version as the evaluator takes it, and a
client queries the server while training runs, printing the answering version and its
prediction for x = 2 (the true line gives 1.5 * 2 - 3 = 0) each time it changes. Then it stops
them and sums up. It reads only their JSON logs and HTTP answers, and imports no TensorFlow.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.processes import Process
from harness.rest_client import RestClient


def show(name: str, kinds: set[str]):
    def print_event(event: dict) -> None:
        if event["event"] in kinds:
            print(f"  {name:<9} {describe(event)}", flush=True)
    return print_event


def describe(event: dict) -> str:
    kind = event["event"]
    if kind == "model_exported":
        return f"published SavedModel {event['step']:>5}"
    if kind == "train_progress":
        return (f"step {event['step']:>5}  loss {event['loss']:.5f}  slope {event['slope']:.4f}"
                f"  intercept {event['intercept']:.4f}")
    if kind == "model_loaded":
        return (f"loaded    SavedModel {event['step']:>5}  in {event['load_seconds'] * 1000:.0f} ms,"
                f" {event['handoff_seconds'] * 1000:.0f} ms after its commit")
    if kind == "evaluated":
        return f"evaluated SavedModel {event['step']:>5}  loss {event['loss']:.5f}"
    if kind == "serving":
        return f"serving on {event['url']}"
    if kind == "promotion_refused":
        return f"refused   SavedModel {event['step']:>5}: {event['reason']}"
    if kind == "load_failed":
        return f"refused   {event['path']}: {event['error']}"
    return kind


class Client(threading.Thread):
    """Asks the server for the prediction at x = 2 every 20 ms; prints each new version's."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, threading.Event()
        self.answers, self.failures, self.versions = 0, 0, []

    def run(self) -> None:
        client = RestClient(self.port, timeout=10)
        while not self.stop.wait(0.02):
            try:
                status, headers, answer = client.predict("linear", {"instances": [[2.0]]})
            except OSError:
                status = 0
            if status == 503:  # no version yet
                continue
            if status != 200:
                self.failures += 1
                continue
            self.answers += 1
            version = int(headers["x-model-version"])
            if not self.versions or version != self.versions[-1]:
                self.versions.append(version)
                print(f"  {'client':<9} answer from version {version:>5}: "
                      f"prediction(x=2) = {answer['predictions'][0][0]:+.5f}", flush=True)
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--export-every", type=int, default=200)
    args = parser.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="tf-handoff-demo-"))
    exports, work = run_dir / "exports", run_dir / "work"
    exports.mkdir()  # so the consumer starts its watch before the first version lands
    print(f"Demo directory: {run_dir}\n")
    consumer = Process("consumer", "--export-dir", exports, "--work-dir", work,
                       "--until-step", args.steps,
                       on_event=show("consumer", {"model_loaded", "evaluated", "load_failed"}))
    server = Process("consumer", "--mode", "serve", "--export-dir", exports, "--work-dir",
                     run_dir / "serve-work", "--port", 0, "--grpc-port", 0,
                     "--model-name", "linear",
                     on_event=show("server", {"serving", "promotion_refused", "load_failed"}))
    producer, client = None, None
    try:
        consumer.wait_seen(lambda e: e["event"] == "watching", timeout=60)
        port = server.wait_seen(lambda e: e["event"] == "serving", timeout=60)["port"]
        server.wait_seen(lambda e: e["event"] == "watching", timeout=60)
        client = Client(port)
        client.start()
        producer = Process("producer", "--export-dir", exports, "--steps", args.steps,
                           "--export-every", args.export_every, "--log-every", 500,
                           on_event=show("producer", {"model_exported", "train_progress"}))
        producer_code = producer.wait(timeout=300)
        consumer_code = consumer.wait(timeout=60)  # it exits once it handled the last step
        server.wait_seen(lambda e: e["event"] == "model_loaded" and e["step"] == args.steps)
        time.sleep(0.2)  # the client's next answer comes from the last version
        client.stop.set()
        client.join(timeout=10)
        server_code = server.terminate()
    except (AssertionError, TimeoutError, OSError) as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.stop.set()
        for process in (producer, consumer, server):
            if process is not None:
                process.kill()

    published = [e["step"] for e in producer.named("model_exported")]
    loaded = consumer.named("model_loaded")
    handoffs = sorted(e["handoff_seconds"] * 1000 for e in loaded)
    print("\nSummary")
    print(f"  versions published: {len(published)} SavedModels, steps {published[0]}..{published[-1]}")
    print(f"  versions loaded:    {len(loaded)} (a busy consumer skips straight to the newest)")
    if handoffs:
        print(f"  handoff latency:    p50 {statistics.median(handoffs):.0f} ms, "
              f"max {handoffs[-1]:.0f} ms (commit to ready, inotify)")
    served = [e["step"] for e in server.named("model_loaded")]
    print(f"  served:             {len(served)} versions went live; the client got "
          f"{client.answers} answers from {len(client.versions)} versions, "
          f"{client.failures} failed")
    print(f"  exit codes:         producer {producer_code}, consumer {consumer_code}, "
          f"server {server_code}")
    print(f"  evaluations:        {work / 'evaluations.jsonl'}")
    print(f"  curves:             make tensorboard EXPORT={exports} WORK={work}")
    ok = (producer_code == consumer_code == server_code == 0 and loaded and not client.failures
          and client.versions and client.versions[-1] == args.steps)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
