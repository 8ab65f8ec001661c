"""``make cluster``: the producer on TensorFlow's own cluster runtime, on this machine.

One parameter server and two workers on free localhost ports, all started as real processes, and
an evaluating consumer on the chief's export dir. The workers train the linear model
asynchronously; worker 0, the chief, publishes. The consumer takes each version, clearing the
``/job:ps`` devices that the chief's training meta graphs carry. Then it sums up.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

from harness.processes import Process, local_cluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4000)
    args = parser.parse_args()

    run_dir = Path(tempfile.mkdtemp(prefix="tf-handoff-cluster-"))
    exports, work = run_dir / "exports", run_dir / "work"
    cluster = local_cluster(workers=2, ps=1)
    print(f"Cluster: {cluster}\nDirectory: {run_dir}\n")
    common = ("--cluster", cluster, "--export-dir", exports, "--steps", args.steps,
              "--checkpoint-every", 200, "--export-every", 500, "--log-every", 500)

    printing = threading.Lock()  # each process's events arrive on a reader thread of its own

    def show(name: str):
        def print_event(event: dict) -> None:
            if event["event"] in {"ps_started", "waiting_for_ps", "training_started",
                                  "worker_joined", "train_progress", "model_exported",
                                  "training_finished", "model_loaded", "evaluated"}:
                figures = {k: v for k, v in event.items()
                           if k in ("step", "loss", "task", "address", "handoff_seconds")}
                with printing:
                    print(f"  {name:<9} {event['event']:<17} {json.dumps(figures)}", flush=True)
        return print_event

    consumer = Process("consumer", "--export-dir", exports, "--work-dir", work,
                       "--until-step", args.steps, on_event=show("consumer"))
    tasks = [Process("producer", "--job", "ps", "--task", 0, "--cluster", cluster,
                     on_event=show("ps/0"))]
    tasks += [Process("producer", "--job", "worker", "--task", i, *common,
                      on_event=show(f"worker/{i}")) for i in (0, 1)]
    ps, chief, worker = tasks
    try:
        codes = {"worker/0": chief.wait(timeout=300), "worker/1": worker.wait(timeout=60)}
        codes["consumer"] = consumer.wait(timeout=60)
        codes["ps/0"] = ps.terminate()  # a ps serves until it is stopped
    except Exception as err:  # noqa: BLE001 - a demo reports and exits 1
        print(f"cluster: {err}", file=sys.stderr)
        return 1
    finally:
        for process in (*tasks, consumer):
            process.kill()

    published = [e["step"] for e in chief.named("model_exported")]
    loaded = consumer.named("model_loaded")
    evaluated = consumer.named("evaluated")
    print("\nSummary")
    print(f"  steps trained:      worker/0 {len(chief.named('train_progress'))} and worker/1 "
          f"{len(worker.named('train_progress'))} progress reports, to global step "
          f"{chief.named('training_finished')[-1]['step'] if chief.named('training_finished') else '?'}")
    print(f"  versions published: {len(published)} SavedModels by the chief, steps "
          f"{published[0] if published else '-'}..{published[-1] if published else '-'}")
    print(f"  versions evaluated: {len(evaluated)}, the last at loss "
          f"{evaluated[-1]['loss'] if evaluated else float('nan'):.5f}")
    print(f"  exit codes:         {', '.join(f'{k} {v}' for k, v in codes.items())}")
    ok = all(code == 0 for code in codes.values()) and loaded and loaded[-1]["step"] >= args.steps
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
