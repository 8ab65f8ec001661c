"""``make demo``: a consumer and a producer as two real processes, and the handoff between them.

It starts an evaluating consumer on an empty directory, then runs the producer on the linear
model, exporting a SavedModel every 200 steps. It prints each version as the consumer takes it,
stops both, and sums up. It reads only their JSON logs and imports no TensorFlow itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def spawn(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, "--log-format", "json", *args],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)


def follow(process: subprocess.Popen, name: str, events: list[dict], show: set[str],
           watching: threading.Event) -> None:
    for line in process.stdout:
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        events.append(event)
        if event["event"] == "watching":
            watching.set()
        if event["event"] in show:
            print(f"  {name:<9} {describe(event)}", flush=True)


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
    print(f"Demo directory: {run_dir}\n")
    consumer_events: list[dict] = []
    producer_events: list[dict] = []
    consumer = spawn("consumer", "--export-dir", str(exports), "--work-dir", str(work),
                     "--until-step", str(args.steps))
    watching = threading.Event()
    readers = [threading.Thread(target=follow, args=(
        consumer, "consumer", consumer_events, {"model_loaded", "evaluated", "load_failed"},
        watching))]
    readers[0].start()
    exports.mkdir(parents=True)  # so the consumer starts its watch before the first version
    watching.wait(timeout=60)
    producer = spawn("producer", "--export-dir", str(exports), "--steps", str(args.steps),
                     "--export-every", str(args.export_every), "--log-every", "500")
    readers.append(threading.Thread(target=follow, args=(
        producer, "producer", producer_events, {"model_exported", "train_progress"},
        threading.Event())))
    readers[1].start()
    try:
        producer_code = producer.wait(timeout=300)
        consumer_code = consumer.wait(timeout=60)  # it exits once it handled the last step
    except subprocess.TimeoutExpired:
        producer.terminate()
        consumer.terminate()
        print("demo: timed out", file=sys.stderr)
        return 1
    for reader in readers:
        reader.join()

    published = [e["step"] for e in producer_events if e["event"] == "model_exported"]
    loaded = [e for e in consumer_events if e["event"] == "model_loaded"]
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
