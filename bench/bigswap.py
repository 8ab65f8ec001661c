"""A big model swapped under load (issue 31, item 2): the real ``consumer.model_server`` serving
a SavedModel with a ~1 GiB embedding table and a small head, a new version every ``interval``,
while client threads send small predicts (8 ids each) as fast as they are answered.

Two runs, as ``bench/serving.py`` does: with swaps, the writer commits into the served base
path; without, into a decoy nobody watches, so both runs carry the same writing load (1 GiB
saved each time) and differ only in the swaps. Each answer is checked: status 200, and its
version (``x-model-version``) one that was live while the request was in flight. The server's
RSS is sampled every 20 ms, and its peak (``VmHWM``) read at the end.

``python -m bench.bigswap`` (3.5 min here), ``--quick`` (64 MiB, 2 versions 1.5 s apart, forked
warm: 25-40 s).
``python -m bench.bigswap write ...`` is the writer process.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench import ms, percentile, start, warm_starts
from harness.processes import free_ports
from harness.rest_client import RestClient

MIB = 2 ** 20
DIM = 64  # the embedding's width; rows = size / (4 * DIM)
IDS = 8  # ids a request looks up
WARM = ("consumer.model_server", "bench.bigswap")  # the modules a quick run forks warm
CLIENTS = 2  # closed-loop clients: a steady load that leaves the server CPU to swap with
BODY = json.dumps({"instances": [[i * 997 for i in range(IDS)]]}).encode()


# -- the writer (its own process) -------------------------------------------------------------

def write(base: Path, versions: int, interval: float, mib: int, first: int) -> None:
    """Commit ``versions`` SavedModels of one graph into ``base`` (TF Serving's layout), one every
    ``interval``, each under a staging name and renamed to its number; keep the newest two."""
    from shared.tfcompat import tf, v1

    rows = mib * MIB // (4 * DIM)
    graph = tf.Graph()
    with graph.as_default():
        ids = v1.placeholder(tf.int64, [None, IDS], name="ids")
        table = v1.get_variable("table", [rows, DIM], tf.float32, v1.zeros_initializer())
        kernel = v1.get_variable("kernel", [DIM, 1], tf.float32, v1.ones_initializer())
        bias = v1.get_variable("bias", [1], tf.float32, v1.zeros_initializer())
        pooled = tf.reduce_mean(tf.gather(table, tf.math.floormod(ids, rows)), axis=1)
        score = tf.identity(tf.matmul(pooled, kernel) + bias, name="score")
        value = v1.placeholder(tf.float32, [1])
        assign = bias.assign(value)
        info = v1.saved_model.utils.build_tensor_info
        signatures = {"serving_default": v1.saved_model.signature_def_utils.build_signature_def(
            {"ids": info(ids)}, {"score": info(score)}, "tensorflow/serving/predict")}
        saver = v1.train.Saver(sharded=True)  # one saver: versions differ in their variables
    base.mkdir(parents=True, exist_ok=True)
    with v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())
        due = time.monotonic()
        for step in range(first, first + versions):
            due += interval
            time.sleep(max(0.0, due - time.monotonic()))
            session.run(assign, {value: [float(step)]})
            staging = base / f".staging-{step}"
            with graph.as_default():
                builder = v1.saved_model.Builder(str(staging))
                builder.add_meta_graph_and_variables(session, ["serve"],
                                                     signature_def_map=signatures, saver=saver,
                                                     strip_default_attrs=True)
                builder.save()
            staging.rename(base / str(step))
            print(json.dumps({"event": "committed", "step": step, "committed_at": time.time()}),
                  flush=True)
            for old in (base / str(step - 2), base / str(step - 3)):
                shutil.rmtree(old, ignore_errors=True)


# -- the load ---------------------------------------------------------------------------------

@dataclass
class Answer:
    sent_at: float  # time.time()
    received_at: float
    status: int
    version: int | None

    @property
    def latency(self) -> float:
        return self.received_at - self.sent_at


def _client(port: int, stop: threading.Event, answers: list[Answer]) -> None:
    client = RestClient(port)
    while not stop.is_set():
        sent = time.time()
        try:
            status, headers, _ = client.call("POST", "/v1/models/big:predict", BODY)
        except (OSError, http.client.HTTPException):
            status, headers = 0, {}
        version = headers.get("x-model-version")
        answers.append(Answer(sent, time.time(), status, int(version) if version else None))
    client.close()


class RssSampler:
    """The server's RSS every ``every`` seconds, on a thread: (time, MiB) pairs."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid, self.every, self.samples = pid, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((time.time(), status_mib(self.pid, "VmRSS")))

    def close(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def status_mib(pid: int, field: str) -> float:
    """A ``/proc/<pid>/status`` figure (VmRSS, VmHWM) in MiB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _load(port: int, writer_args: tuple) -> tuple[list[Answer], list[dict], float]:
    stop, per_client = threading.Event(), [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=_client, args=(port, stop, a)) for a in per_client]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        writer = start("bench.bigswap", "write", *writer_args)
        assert writer.wait(timeout=900) == 0, writer.stderr
        time.sleep(1.0)  # the last version's swap is under load too
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    answers = sorted((a for a in sum(per_client, [])), key=lambda a: a.sent_at)
    return answers, writer.named("committed"), time.monotonic() - began


def wrong_versions(answers: list[Answer], live_from: dict[int, float]) -> int:
    """Answers from a version that was not live while the request was in flight: it went live
    after the answer came, or the version after it had gone live before the request was sent
    (a request holds the version it started on to its end)."""
    steps = sorted(live_from)
    wrong = 0
    for answer in answers:
        if answer.status != 200:
            continue
        v = answer.version
        if v not in live_from or live_from[v] > answer.received_at:
            wrong += 1
            continue
        later = [live_from[s] for s in steps if s > v]
        if later and min(later) < answer.sent_at:
            wrong += 1
    return wrong


def _summary(answers: list[Answer], seconds: float) -> dict:
    latencies = [a.latency for a in answers if a.status == 200]
    return {"requests_per_s": len(latencies) / seconds, "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99), "max": max(latencies),
            "failed": sum(a.status != 200 for a in answers), "answers": len(answers)}


def bigswap_run(mib: int, versions: int, interval: float, tmp: Path,
                extra: tuple = ()) -> dict:
    base, decoy = tmp / "bigswap" / "base", tmp / "bigswap" / "decoy"
    seed = start("bench.bigswap", "write", "--base", base, "--versions", 1, "--interval", 0,
                 "--mib", mib, "--first", 1)
    assert seed.wait(timeout=300) == 0, seed.stderr
    rest, grpc = free_ports(2)
    server = start("consumer.model_server", f"--rest_api_port={rest}", f"--port={grpc}",
                   "--model_name=big", f"--model_base_path={base}", *extra)
    try:
        server.wait_for(lambda e: e["event"] == "model_loaded", timeout=300)
        idle_mib = status_mib(server.popen.pid, "VmRSS")
        sampler = RssSampler(server.popen.pid)
        writing = ("--versions", versions, "--interval", interval, "--mib", mib, "--first", 2)
        quiet, _, quiet_seconds = _load(rest, ("--base", decoy, *writing))
        shutil.rmtree(decoy, ignore_errors=True)
        swapping, commits, swapping_seconds = _load(rest, ("--base", base, *writing))
        samples = sampler.close()
        peak_mib = status_mib(server.popen.pid, "VmHWM")
    finally:
        code = server.terminate()
    assert code == 0, server.stderr
    loads = server.named("model_loaded")
    live_from = {e["step"]: e["ready_at"] for e in loads}
    swaps = [e for e in loads if e["step"] > 1]
    swap_windows = [(c["committed_at"], live_from.get(c["step"], c["committed_at"]))
                    for c in commits]
    during = [a for a in swapping if any(s <= a.received_at and a.sent_at <= e
                                         for s, e in swap_windows)]
    return {"mib": mib, "versions": versions, "interval": interval, "clients": CLIENTS,
            "quiet": _summary(quiet, quiet_seconds),
            "swapping": _summary(swapping, swapping_seconds),
            "during_p99": percentile([a.latency for a in during if a.status == 200], 0.99)
            if during else float("nan"),
            "wrong": wrong_versions(swapping, live_from), "swaps": len(swaps),
            "commit_to_live": [e["handoff_seconds"] for e in swaps],
            "phases": [e["phases"] for e in swaps], "loads": [e["load"] for e in swaps],
            "idle_rss_mib": idle_mib, "peak_rss_mib": peak_mib,
            "max_sampled_rss_mib": max(m for _, m in samples) if samples else 0.0}


def bigswap_rows(run: dict) -> list[tuple]:
    quiet, swapping = run["quiet"], run["swapping"]

    def load(r):
        return (f"{r['requests_per_s']:.0f} req/s, p50 {ms(r['p50'])}, p99 {ms(r['p99'])}, "
                f"max {ms(r['max'])}, {r['failed']} failed of {r['answers']}")

    ratio = swapping["p99"] / quiet["p99"]
    live = sorted(run["commit_to_live"])
    gib = run["mib"] / 1024
    return [
        (f"Big model ({run['mib']} MiB of variables), a version every {run['interval']:g} s "
         f"({run['swaps']} swaps, {CLIENTS} clients)",
         f"{load(swapping)}; p99 {ms(run['during_p99'])} over the requests in flight during a "
         f"swap; {run['wrong']} from a version not live; commit to live p50 "
         f"{ms(live[len(live) // 2])}, max {ms(live[-1])}; peak RSS {run['peak_rss_mib']:.0f} MiB "
         f"({run['peak_rss_mib'] / run['mib']:.2f}x the variables; idle "
         f"{run['idle_rss_mib']:.0f} MiB)",
         f"p99 {ratio:.2f}x the run without swaps", "p99 <= 1.25x, 0 failed, 0 wrong",
         ratio <= 1.25 and swapping["failed"] == 0 and run["wrong"] == 0),
        (f"Big model ({gib:g} GiB), no swaps (same writer load, unwatched dir)", load(quiet),
         "baseline", "", None),
    ]


def main() -> None:
    if sys.argv[1:2] == ["write"]:
        parser = argparse.ArgumentParser(prog="bench.bigswap write")
        parser.add_argument("--base", type=Path, required=True)
        parser.add_argument("--versions", type=int, required=True)
        parser.add_argument("--interval", type=float, required=True)
        parser.add_argument("--mib", type=int, required=True)
        parser.add_argument("--first", type=int, default=1)
        args = parser.parse_args(sys.argv[2:])
        write(args.base, args.versions, args.interval, args.mib, args.first)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mib", type=int)
    parser.add_argument("--versions", type=int)
    parser.add_argument("--interval", type=float)
    parser.add_argument("--json", action="store_true", help="print the raw figures too")
    args = parser.parse_args()
    mib = args.mib or (64 if args.quick else 1024)
    versions = args.versions or (2 if args.quick else 7)
    interval = args.interval or (1.5 if args.quick else 10.0)
    # quick: its processes forked warm, a smoke test (as ``make bench --quick`` does)
    warm = warm_starts(WARM) if args.quick else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="bench-bigswap-") as tmp, warm:
        run = bigswap_run(mib, versions, interval, Path(tmp))
    if args.json:
        print(json.dumps(run))
    for row in bigswap_rows(run):
        print(" | ".join("" if c is None else str(c) for c in row))


if __name__ == "__main__":
    main()
