"""The serving bench's throughput runs, each against yardsticks measured in the same run.

- The HTTP stack: wrk (1 thread, 4 keep-alive connections) against a hello-world Starlette app
  on uvicorn with h11 and asyncio (the stack served with before: the fixed yardstick), the
  same hello world on the stack the server runs on, and the real model server answering
  one-example mlp predicts.
- gRPC against REST: the same Python client (``bench/client.py``, 4 threads) on both ports.
- Many clients: 64 and 256 wrk connections against the server's defaults, which shed by
  queueing delay (a request may wait half of ``--rest_api_timeout_in_ms``, 15 s): every one
  answered, at what p99, beside the unloaded p99.
- Overload: 256 wrk connections against a server whose bound is tight
  (``--rest_api_timeout_in_ms=100``: 50 ms of waiting), while a probe on one more connection
  times its own requests: how fast a refusal comes, and how long an admitted request takes
  against the same probe with the server otherwise idle.
- Batching: 64 wrk connections of one-example predicts on a wider MLP (``bench/widemodel.py``),
  with and without ``--enable_batching``; Session.run calls per request from the server's
  metrics.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

from bench import ms, percentile, start, wrk
from harness.processes import free_ports
from harness.rest_client import RestClient

MLP_BODY = json.dumps({"instances": [[0.5] * 28]}).encode()
WIDE_BODY = json.dumps({"instances": [[0.5] * 512]}).encode()
# TF Serving's advice for CPUs (g3doc/batching.md): as many batch threads as cores, and a
# timeout tuned up from 0: 5 ms here. 10 ms and one thread formed larger batches still (0.05
# runs a request against 0.1) and answered 20% more; the advice is kept.
BATCHING = """max_batch_size { value: 64 }
batch_timeout_micros { value: 5000 }
max_enqueued_batches { value: 16 }
num_batch_threads { value: 2 }
"""


def hello_run(stack: str, seconds: float) -> dict:
    server = start("bench.hello", "--stack", stack)
    try:
        port = server.wait_for(lambda e: e["event"] == "serving", timeout=60)["port"]
        return wrk.post(f"http://127.0.0.1:{port}/v1/models/mlp:predict", MLP_BODY,
                        connections=4, seconds=seconds)
    finally:
        server.terminate()


class ModelServer:
    """``consumer.model_server`` on one model's base path, started cold (or warm in a quick
    run), with its REST and gRPC ports."""

    def __init__(self, name: str, base: Path, work: Path, *flags: str) -> None:
        self.name = name
        self.rest, self.grpc = free_ports(2)
        self.process = start("consumer.model_server", f"--model_name={name}",
                             f"--model_base_path={base}", f"--rest_api_port={self.rest}",
                             f"--port={self.grpc}", "--work_dir", work, *flags)
        self.process.wait_for(lambda e: e["event"] == "serving", timeout=120)
        self.process.wait_for(lambda e: e["event"] == "model_loaded", timeout=120)
        self.url = f"http://127.0.0.1:{self.rest}/v1/models/{name}:predict"

    def metric(self, pattern: str) -> float:
        """The sum of every series whose line matches ``pattern`` (a regex up to the value)."""
        client = RestClient(self.rest)
        text = client.call("GET", "/monitoring/prometheus/metrics")[2].decode()
        client.close()
        return sum(float(m[1]) for m in re.finditer(rf"^{pattern}\S* (\S+)$", text, re.M))

    def seconds_in_server(self, protocol: str) -> float:
        """Mean time a predict spent in the server, by protocol (from its histograms)."""
        labels = rf'{{(?=[^}}]*protocol="{protocol}")(?=[^}}]*endpoint="predict")[^}}]*}}'
        return self.metric(f"handoff_request_latency_seconds_sum{labels}") / \
            self.metric(f"handoff_request_latency_seconds_count{labels}")

    def close(self) -> None:
        assert self.process.terminate() == 0, self.process.stderr[-2000:]


def client_run(server: ModelServer, protocol: str, body: bytes, seconds: float,
               threads: int = 4) -> dict:
    port = server.rest if protocol == "rest" else server.grpc
    client = start("bench.client", "--protocol", protocol, "--port", port, "--model",
                   server.name, "--body", body.decode(), "--threads", threads, "--seconds",
                   seconds)
    assert client.wait(timeout=seconds + 120) == 0, client.stderr[-2000:]
    return client.named("client")[0]


def _probe(url_port: int, stop: threading.Event, seen: list) -> None:
    """Sequential predicts on one connection: (status, seconds) for each."""
    client = RestClient(url_port)
    while not stop.is_set():
        began = time.perf_counter()
        status, _, _ = client.call("POST", "/v1/models/mlp:predict", MLP_BODY)
        seen.append((status, time.perf_counter() - began))
    client.close()


def probe_alone(server: ModelServer, seconds: float) -> list:
    stop, seen = threading.Event(), []
    thread = threading.Thread(target=_probe, args=(server.rest, stop, seen))
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join()
    return seen


OVERLOAD_TIMEOUT_MS = 100  # the overload run's --rest_api_timeout_in_ms: 50 ms of waiting


def idle_p99(server: ModelServer, seconds: float) -> float:
    return percentile([s for status, s in probe_alone(server, min(seconds, 3.0))
                       if status == 200], 0.99)


def many_clients_run(server: ModelServer, seconds: float) -> dict:
    """64 and 256 connections against the defaults: TF Serving queues them all and answers."""
    return {connections: wrk.post(server.url, MLP_BODY, connections=connections,
                                  seconds=seconds) for connections in (64, 256)}


def overload_run(server: ModelServer, seconds: float) -> dict:
    idle = [s for status, s in probe_alone(server, min(seconds, 3.0)) if status == 200]
    stop, seen = threading.Event(), []
    thread = threading.Thread(target=_probe, args=(server.rest, stop, seen))
    thread.start()
    try:
        flood = wrk.post(server.url, MLP_BODY, connections=256, seconds=seconds)
    finally:
        stop.set()
        thread.join()
    admitted = [s for status, s in seen if status == 200]
    refused = [s for status, s in seen if status == 503]
    return {"flood": flood, "idle_p99": percentile(idle, 0.99),
            "admitted_p50": percentile(admitted, 0.5) if admitted else float("nan"),
            "admitted_p99": percentile(admitted, 0.99) if admitted else float("nan"),
            "refused_p50": percentile(refused, 0.5) if refused else float("nan"),
            "probe": {"admitted": len(admitted), "refused": len(refused),
                      "other": len(seen) - len(admitted) - len(refused)}}


def mlp_run(seconds: float, tmp: Path) -> dict:
    """Yardsticks, the mlp's REST and gRPC predicts, and overload."""
    root = tmp / "throughput"
    seed = start("bench.publisher", "--export-dir", root / "mlp", "--versions", 1, "--interval",
                 0, "--model", "mlp", "--kind", "savedmodel")
    assert seed.wait(timeout=300) == 0, seed.stderr
    hello = {stack: hello_run(stack, seconds) for stack in ("starlette", "ours")}
    server = ModelServer("mlp", root / "mlp" / "savedmodels", root / "work")
    try:
        predict = wrk.post(server.url, MLP_BODY, connections=4, seconds=seconds)
        rest = client_run(server, "rest", MLP_BODY, seconds)
        grpc = client_run(server, "grpc", MLP_BODY, seconds)
        in_server = {p: server.seconds_in_server(p) for p in ("rest", "grpc")}
        idle = idle_p99(server, seconds)
        many = many_clients_run(server, seconds)
    finally:
        server.close()
    server = ModelServer("mlp", root / "mlp" / "savedmodels", root / "work-overload",
                         f"--rest_api_timeout_in_ms={OVERLOAD_TIMEOUT_MS}")
    try:
        overload = overload_run(server, seconds)
    finally:
        server.close()
    inprocess = start("bench.inprocess", "--export-dir", root / "mlp", "--body",
                      MLP_BODY.decode(), "--threads", 4, "--seconds", min(seconds, 5.0))
    assert inprocess.wait(timeout=300) == 0, inprocess.stderr
    return {"hello": hello, "predict": predict, "rest": rest, "grpc": grpc,
            "in_server": in_server, "idle_p99": idle, "many": many, "overload": overload,
            "inprocess": inprocess.named("inprocess")[0]}


def batching_run(seconds: float, tmp: Path) -> dict:
    """64 connections of one-example predicts on the wide MLP, without and with batching."""
    root = tmp / "batching"
    made = start("bench.widemodel", "--path", root / "wide" / "1")
    assert made.wait(timeout=300) == 0, made.stderr[-2000:]
    (root / "batching.config").write_text(BATCHING)
    runs = {}
    for mode, flags in (("unbatched", ("--max_inflight_requests=1024",)),
                        ("batched", ("--enable_batching",
                                     f"--batching_parameters_file={root / 'batching.config'}"))):
        server = ModelServer("wide", root / "wide", root / f"work-{mode}", *flags)
        try:
            wrk.post(server.url, WIDE_BODY, connections=64, seconds=1)  # warm the batch sizes
            runs_before = server.metric("handoff_session_runs_total")
            answered_before = server.metric('handoff_requests_total{[^}]*code="200"')
            load = wrk.post(server.url, WIDE_BODY, connections=64, seconds=seconds)
            load["runs_per_request"] = (
                (server.metric("handoff_session_runs_total") - runs_before)
                / max(1.0, server.metric('handoff_requests_total{[^}]*code="200"')
                      - answered_before))
        finally:
            server.close()
        runs[mode] = load
    return runs


def _load(run: dict) -> str:
    return f"{run['requests_per_s']:,.0f} req/s, p50 {ms(run['p50'])}, p99 {ms(run['p99'])}"


def mlp_rows(run: dict) -> list[tuple]:
    hello, predict, limit = run["hello"], run["predict"], run["inprocess"]
    yardstick, ours = hello["starlette"]["requests_per_s"], hello["ours"]["requests_per_s"]
    over_hello = predict["requests_per_s"] / yardstick
    over_runs = predict["requests_per_s"] / limit["requests_per_s"]
    over_api = predict["requests_per_s"] / limit["api_requests_per_s"]
    rest, grpc, overload = run["rest"], run["grpc"], run["overload"]
    flood, probe = overload["flood"], overload["probe"]
    bound = OVERLOAD_TIMEOUT_MS / 2000  # seconds a request may wait
    admitted = (overload["admitted_p99"] - bound) / overload["idle_p99"]
    refusal = overload["refused_p50"] / overload["idle_p99"]
    many = [(f"Serving, {n} connections, no batching, the defaults (wrk)",
             f"{_load(load)}, {load['non2xx']:,} of {load['requests']:,} refused, "
             f"{load['errors']} errors", f"p99 {load['p99'] / run['idle_p99']:.0f}x the idle p99 "
             f"({ms(run['idle_p99'])})", "every request answered",
             load["non2xx"] + load["errors"] == 0) for n, load in run["many"].items()]
    return [
        ("Serving, REST predict, mlp, one example (wrk, 4 connections)",
         f"{_load(predict)}, {predict['non2xx'] + predict['errors']} failed",
         f"{over_hello:.2f}x the hello world on h11; {over_runs:.2f}x the Session.run limit, "
         f"{over_api:.2f}x the in-process REST predict",  # the Session.run target: retired
         ">= 0.7x hello (h11)", over_hello >= 0.7),  # (JSON-bound: docs/BENCHMARKS.md)
        ("Serving yardstick, hello world: Starlette, uvicorn, h11, asyncio", _load(
            hello["starlette"]), "baseline", "", None),
        ("Serving yardstick, hello world: bare ASGI, uvicorn, httptools, uvloop (our stack)",
         _load(hello["ours"]), f"{ours / yardstick:.2f}x the h11 hello world", "", None),
        ("Serving yardstick, in-process limit, mlp, 4 threads",
         f"{limit['requests_per_s']:,.0f} Session.run/s; {limit['api_requests_per_s']:,.0f} "
         "whole REST predicts/s (parse, run, render)", "baseline", "", None),
        ("Serving, gRPC predict, mlp (Python client, 4 threads)", _load(grpc),
         f"{grpc['requests_per_s'] / rest['requests_per_s']:.2f}x REST's req/s, same client",
         "report", None),
        ("Serving, REST predict, mlp (the same Python client)", _load(rest), "baseline", "",
         None),
        *many,
        (f"Serving overload, 256 connections, --rest_api_timeout_in_ms {OVERLOAD_TIMEOUT_MS} "
         f"(waits {ms(bound)} at most)",
         f"{flood['ok_per_s']:,.0f} answered/s, {flood['non2xx']:,} of {flood['requests']:,} "
         f"refused (503); a probe: refusal p50 {ms(overload['refused_p50'])}, admitted p99 "
         f"{ms(overload['admitted_p99'])} ({probe['admitted']} admitted, {probe['refused']} "
         "refused)", f"admitted p99 the wait bound + {admitted:.1f}x, refusal p50 "
         f"{refusal:.1f}x the idle p99 ({ms(overload['idle_p99'])})", "both <= 3x",
         admitted <= 3 and refusal <= 3),
    ]


def batching_rows(runs: dict) -> list[tuple]:
    batched, unbatched = runs["batched"], runs["unbatched"]
    ratio = batched["ok_per_s"] / unbatched["ok_per_s"]

    def figure(run):
        return (f"{run['ok_per_s']:,.0f} answers/s, p50 {ms(run['p50'])}, p99 {ms(run['p99'])}, "
                f"{run['runs_per_request']:.3f} Session.run a request")
    return [
        ("Batching, wide MLP, 64 connections of one example", figure(batched),
         f"{ratio:.2f}x without batching", ">= 2x, < 0.25 runs a request",
         ratio >= 2 and batched["runs_per_request"] < 0.25),
        ("No batching, wide MLP, 64 connections", figure(unbatched), "baseline", "", None),
    ]


def profiles(run: dict) -> list[str]:
    limit, hello = run["inprocess"], run["hello"]["ours"]
    return [
        f"Where a REST predict's time goes (mlp, one example): Session.run "
        f"{ms(limit['session_run_s'])}; the whole predict in-process (parse, run, render) "
        f"{ms(limit['api_predict_s'])}; the stack alone {ms(1 / hello['requests_per_s'])} of "
        f"loop time a request (the bare hello world's rate); in the server "
        f"{ms(run['in_server']['rest'])} on average, waiting for a worker included; at wrk's "
        f"p50 {ms(run['predict']['p50'])} with 4 connections on 2 cores.",
        f"Where a gRPC predict's time goes: the service's Predict in-process (proto to array, "
        f"run, array to proto) {ms(limit['grpc_predict_s'])}; in the server "
        f"{ms(run['in_server']['grpc'])} on average (gRPC's thread pool, the handler); at the "
        f"client p50 {ms(run['grpc']['p50'])}: the rest is gRPC's Python client and server "
        f"machinery, and the client's own CPU on the same 2 cores.",
    ]


if __name__ == "__main__":  # a run of its own, for working on one figure
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        which = sys.argv[1] if len(sys.argv) > 1 else "mlp"
        run = mlp_run if which == "mlp" else batching_run
        print(json.dumps(run(float(sys.argv[2]) if len(sys.argv) > 2 else 5.0, Path(tmp)),
                         indent=1))
