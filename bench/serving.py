"""The serving bench: a real server process under a closed-loop HTTP load, with and without swaps.

Both runs have a paced publisher committing an mlp SavedModel every ``interval``: into the
served export dir (swaps), or into a decoy dir nobody watches (no swaps). So the two runs carry
the same CPU load from publishing, and differ only in the swaps. The clients are Python threads
that note each answer's version and the time it came, for staleness: from a version's commit
to the first answer from it (or a newer one).
"""

from __future__ import annotations

import http.client
import json
import re
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench import ms, percentile, start
from harness.rest_client import RestClient

CLIENTS = 4
BODY = json.dumps({"instances": [[0.5] * 28]}).encode()  # one mlp example, as clients send it


@dataclass
class Answer:
    received_at: float  # time.time() when the response was read
    latency: float  # seconds, request sent to response read
    status: int
    version: int | None


def _client(port: int, stop: threading.Event, answers: list[Answer]) -> None:
    client = RestClient(port)
    while not stop.is_set():
        started = time.perf_counter()
        try:
            status, headers, _ = client.call("POST", "/v1/models/mlp:predict", BODY)
        except (OSError, http.client.HTTPException):
            status, headers = 0, {}
        version = headers.get("x-model-version")
        answers.append(Answer(time.time(), time.perf_counter() - started, status,
                              int(version) if version else None))
    client.close()


def _load(port: int, publisher_args: tuple) -> tuple[list[Answer], list[dict], float]:
    """Closed-loop load from CLIENTS connections while a paced publisher runs to its end."""
    stop, per_client = threading.Event(), [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=_client, args=(port, stop, answers))
               for answers in per_client]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        publisher = start("bench.publisher", *publisher_args)
        assert publisher.wait(timeout=600) == 0, publisher.stderr
        time.sleep(0.2)  # the last commit gets its answers too
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    answers = sorted((a for answers in per_client for a in answers), key=lambda a: a.received_at)
    return answers, publisher.named("committed"), time.monotonic() - began


def _summary(answers: list[Answer], seconds: float) -> dict:
    latencies = [a.latency for a in answers if a.status == 200]
    return {"requests_per_s": len(latencies) / seconds, "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99), "failed": sum(a.status != 200 for a in answers),
            "answers": len(answers)}


def _staleness(answers: list[Answer], commits: list[dict]) -> list[float]:
    """Per committed version: its commit until the first answer from it or a newer version."""
    stale = []
    for commit in commits:
        first = next((a.received_at for a in answers
                      if a.version is not None and a.version >= commit["step"]
                      and a.received_at >= commit["committed_at"]), None)
        if first is not None:
            stale.append(first - commit["committed_at"])
    return stale


def _server_seconds(port: int) -> float:
    """Mean time a predict spent in the server (parse, run, render), from its histograms: the
    sum over every version's series."""
    client = RestClient(port)
    text = client.call("GET", "/monitoring/prometheus/metrics")[2].decode()
    client.close()

    def total(name: str) -> float:
        series = (rf'^handoff_request_latency_seconds_{name}{{[^}}]*endpoint="predict"[^}}]*}}'
                  r' (\S+)$')
        return sum(float(match[1]) for match in re.finditer(series, text, re.M))
    return total("sum") / total("count")


def serving_run(versions: int, interval: float, tmp: Path) -> dict:
    root, decoy = tmp / "serving" / "exports", tmp / "serving" / "decoy"
    seed = start("bench.publisher", "--export-dir", root, "--versions", 1, "--interval", 0,
                 "--model", "mlp", "--kind", "savedmodel", "--first-step", 0)
    assert seed.wait(timeout=120) == 0, seed.stderr
    server = start("consumer", "--mode", "serve", "--export-dir", root, "--work-dir",
                   tmp / "serving" / "work", "--port", 0, "--grpc-port", 0)
    try:
        port = server.wait_for(lambda e: e["event"] == "serving", timeout=60)["port"]
        server.wait_for(lambda e: e["event"] == "model_loaded", timeout=60)
        paced = ("--versions", versions, "--interval", interval, "--model", "mlp",
                 "--kind", "savedmodel")
        quiet, _, quiet_seconds = _load(port, ("--export-dir", decoy, *paced))
        swapping, commits, swapping_seconds = _load(port, ("--export-dir", root, *paced))
        server_seconds = _server_seconds(port)
    finally:
        code = server.terminate()
    assert code == 0, server.stderr
    stale = _staleness(swapping, commits)
    loads = server.named("model_loaded")[1:]
    phases = {name: statistics.median(e["phases"][name] for e in loads)
              for name in loads[0]["phases"]}
    phases["handoff"] = statistics.median(e["handoff_seconds"] for e in loads)
    return {"quiet": _summary(quiet, quiet_seconds),
            "swapping": _summary(swapping, swapping_seconds),
            "load_phases": phases,
            "swaps": len(server.named("model_loaded")) - 1,  # the first load is no swap
            "versions": versions, "interval": interval, "clients": CLIENTS,
            "staleness_p50": statistics.median(stale) if stale else float("nan"),
            "staleness_max": max(stale) if stale else float("nan"),
            "server_predict_s": server_seconds}


def serving_rows(serve: dict) -> list[tuple]:
    quiet, swapping = serve["quiet"], serve["swapping"]

    def load(run):
        return (f"{run['requests_per_s']:.0f} req/s, p50 {ms(run['p50'])}, p99 {ms(run['p99'])}, "
                f"{run['failed']} failed of {run['answers']}")

    p99_ratio = swapping["p99"] / quiet["p99"]
    every = f"{serve['interval'] * 1000:.0f} ms"
    return [
        (f"Serving, a swap every {every} ({serve['swaps']} swaps)", load(swapping),
         f"p99 {p99_ratio:.2f}x the run without swaps", "p99 <= 1.5x, 0 failed",
         p99_ratio <= 1.5 and swapping["failed"] == 0 and quiet["failed"] == 0),
        ("Serving, no swaps (same publisher load, unwatched dir)", load(quiet), "baseline", "",
         None),
        ("Serving staleness, commit to first answer",
         f"p50 {ms(serve['staleness_p50'])}, max {ms(serve['staleness_max'])}",
         f"{1.0 / serve['staleness_p50']:.0f}x inside TF Serving's 1 s poll", "p50 < 10 ms",
         serve["staleness_p50"] < 0.010),
    ]


def swap_profile(serve: dict) -> str:
    return (f"A swap under the serving load ({serve['clients']} clients, medians): " + ", ".join(
        f"{name} {ms(seconds)}" for name, seconds in serve["load_phases"].items())
        + f"; a predict spent {ms(serve['server_predict_s'])} in the server on average.")
