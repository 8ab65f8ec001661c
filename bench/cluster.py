"""The cluster bench: training throughput of the mlp on TensorFlow's ps/worker runtime, with one
worker and with two, against the producer alone in one process, all in the same run.

Each run is the real producer: ``--job ps`` and ``--job worker`` tasks on free localhost ports,
or one process without a cluster. Throughput is read from the chief's ``train_progress``
events: the global step, which every worker advances, over the time between the first and the
last of them, so start-up, joining and the final publish stay out of the figure.
"""

from __future__ import annotations

from pathlib import Path

from bench import start
from shared.datasets import load
from harness.processes import event_time, local_cluster

def _rate(progress: list[dict]) -> float:
    """Global steps per second between the first and the last progress event."""
    first, last = progress[0], progress[-1]
    return (last["step"] - first["step"]) / (event_time(last) - event_time(first))


def _train(tmp: Path, workers: int, steps: int, log_every: int) -> float:
    """Steps per second of one run: ``workers`` 0 is the producer alone, without a cluster."""
    root = tmp / f"cluster{workers}" / "exports"
    common = ("--model", "mlp", "--export-dir", root, "--steps", steps, "--checkpoint-every",
              steps, "--export-every", steps, "--log-every", log_every)
    if workers == 0:
        chief = start("producer", *common)
        assert chief.wait(timeout=600) == 0, chief.stderr
        return _rate(chief.named("train_progress"))
    cluster = local_cluster(workers=workers, ps=1)
    ps = start("producer", "--job", "ps", "--task", 0, "--cluster", cluster)
    tasks = [start("producer", "--job", "worker", "--task", task, "--cluster", cluster, *common)
             for task in range(workers)]
    try:
        for task in tasks:
            assert task.wait(timeout=600) == 0, task.stderr
    finally:
        ps.terminate()
        for task in tasks:
            task.kill()
    return _rate(tasks[0].named("train_progress"))


def cluster_run(steps: int, tmp: Path) -> dict:
    """Examples per second: the producer alone, then one ps with one worker, then with two."""
    batch = load({"name": "random_classes"}).params["batch_size"]  # the mlp's examples a step
    log_every = max(1, steps // 50 // 10)  # epochs of 50 steps: about ten progress events a run
    rates = {workers: _train(tmp, workers, steps, log_every) * batch for workers in (0, 1, 2)}
    return {"alone": rates[0], "one_worker": rates[1], "two_workers": rates[2], "steps": steps,
            "batch": batch}


def cluster_rows(run: dict) -> list[tuple]:
    alone, one, two = run["alone"], run["one_worker"], run["two_workers"]
    return [
        ("Cluster training, mlp, 1 ps + 2 workers", f"{two:,.0f} examples/s",
         f"{two / one:.2f}x one worker; {two / alone:.2f}x the producer alone", "report", None),
        ("Cluster training, mlp, 1 ps + 1 worker", f"{one:,.0f} examples/s",
         f"{one / alone:.2f}x the producer alone", "", None),
        ("Producer alone, mlp, no cluster", f"{alone:,.0f} examples/s "
         f"({run['batch']} a step, {run['steps']} steps)", "baseline", "", None),
    ]
