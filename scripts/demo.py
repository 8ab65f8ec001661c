"""``make demo``: a consumer and a producer as two real processes, and the handoff between them.

It starts an evaluating consumer on an empty directory, then runs the producer on the linear
model, exporting a SavedModel every 200 steps. It prints each version as the consumer takes it,
stops both, and sums up. It reads only their JSON logs and imports no TensorFlow itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from shared.processes import Process


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
    if kind == "load_failed":
        return f"refused   {event['path']}: {event['error']}"
    return kind


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
    producer = None
    try:
        consumer.wait_for(lambda e: e["event"] == "watching", timeout=60)
        producer = Process("producer", "--export-dir", exports, "--steps", args.steps,
                           "--export-every", args.export_every, "--log-every", 500,
                           on_event=show("producer", {"model_exported", "train_progress"}))
        producer_code = producer.wait(timeout=300)
        consumer_code = consumer.wait(timeout=60)  # it exits once it handled the last step
    except (AssertionError, TimeoutError) as err:
        print(f"demo: {err}", file=sys.stderr)
        return 1
    finally:
        for process in (producer, consumer):
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
    print(f"  exit codes:         producer {producer_code}, consumer {consumer_code}")
    print(f"  evaluations:        {work / 'evaluations.jsonl'}")
    return 0 if producer_code == 0 and consumer_code == 0 and loaded else 1


if __name__ == "__main__":
    sys.exit(main())
