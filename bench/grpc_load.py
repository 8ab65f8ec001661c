"""gRPC against REST on one server, each driven by a native load generator so that the client
does not eat the server's share of the CPU: ``h2load`` (nghttp2-client) sends a prepared gRPC
frame (a ``PredictRequest`` for one mlp example, framed as gRPC frames it: a compressed flag,
a 4-byte big-endian length, the message), ``wrk`` posts the same example as JSON. Both at 4 and
64 concurrent streams, against the same server, in turns (``_compare``). Beside each rate, the
server process's CPU time per answer: on a machine shared with other work the rates move by a
third from one second to the next, the CPU a call costs much less.

h2load reads no trailers, so it cannot see a call's ``grpc-status`` (it counts a refused call as
succeeded): the calls are counted by code from the server's own metrics over each turn, and a
sample call is read back whole with a real gRPC client first.

``python -m bench.grpc_load [seconds [server flags...]]`` runs it alone and prints the rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import ms, start, wrk
from bench.throughput import MLP_BODY, ModelServer

STREAMS = (4, 64)
ROUNDS = 4  # turns of each protocol at each concurrency
CONNECTIONS = 4  # h2load's connections; streams are spread over them, as wrk's over its own
_PATH = "/tensorflow.serving.PredictionService/Predict"


def available() -> bool:
    return shutil.which("h2load") is not None


def predict_request(model: str, rows: list, key: str = "features") -> bytes:
    """A serialized PredictRequest for ``rows`` as float_val, as bench/client.py sends it."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    array = np.asarray(rows, np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[key].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=array.ravel().tolist(),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape])))
    return request.SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: not compressed, its length, its bytes."""
    return struct.pack(">?I", False, len(message)) + message


def h2load(port: int, frame: bytes, *, streams: int, seconds: float,
           connections: int = CONNECTIONS, calls: int | None = None, path: str = _PATH) -> dict:
    """``streams`` concurrent calls (over ``connections``) of the gRPC method at ``path``
    (Predict) for ``seconds``, or until ``calls`` are done if given."""
    connections = min(connections, streams)
    length = ["-n", str(calls)] if calls is not None else ["-D", str(max(1, round(seconds)))]
    with tempfile.NamedTemporaryFile(suffix=".grpc") as body:
        body.write(frame)
        body.flush()
        result = subprocess.run(
            ["h2load", "-d", body.name, "-H", "content-type: application/grpc",
             "-H", "te: trailers", "-c", str(connections), "-m", str(streams // connections),
             "-t", "1", *length, f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"h2load failed: {result.stderr.strip()[-500:]}")
    return _h2load_summary(result.stdout, seconds)


def _h2load_summary(out: str, seconds: float) -> dict:
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if done is None:
        raise RuntimeError(f"h2load's output was not understood: {out[-500:]}")
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    request = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    return {"requests_per_s": float(rate[1]), "requests": int(done[1]),
            "failed": int(done[3]) + int(done[4]) + int(done[5]),
            "min": _seconds(request[1]), "max": _seconds(request[2]),
            "mean": _seconds(request[3])}


def _seconds(text: str) -> float:
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * scale
    raise ValueError(text)


def _grpc_answers(server: ModelServer) -> tuple[float, float]:
    """gRPC predicts the server answered so far: OK, and any other code."""
    labels = '(?=[^}]*protocol="grpc")(?=[^}]*endpoint="predict")'
    return (server.metric(f'handoff_requests_total{{{labels}(?=[^}}]*code="OK")'),
            server.metric(f'handoff_requests_total{{{labels}(?![^}}]*code="OK")'))


def _sample(port: int, message: bytes) -> str:
    """One call from a real gRPC client: its status and output, read whole."""
    import grpc
    from tensorflow_serving.apis import predict_pb2

    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        answer = channel.unary_unary(_PATH)(message, timeout=30)
        return ", ".join(sorted(predict_pb2.PredictResponse.FromString(answer).outputs))
    finally:
        channel.close()


def grpc_load_run(seconds: float, tmp: Path, *flags: str) -> dict:
    """h2load and wrk on one mlp server (started with ``flags``), at each of ``STREAMS``."""
    root = tmp / "grpc_load"
    seed = start("bench.publisher", "--export-dir", root / "mlp", "--versions", 1, "--interval",
                 0, "--model", "mlp", "--kind", "savedmodel")
    assert seed.wait(timeout=300) == 0, seed.stderr
    message = predict_request("mlp", json.loads(MLP_BODY)["instances"])
    frame = grpc_frame(message)
    server = ModelServer("mlp", root / "mlp" / "savedmodels", root / "work", *flags)
    runs: dict = {"outputs": None}
    try:
        runs["outputs"] = _sample(server.grpc, message)
        h2load(server.grpc, frame, streams=4, seconds=1)  # warm: threads, caches
        wrk.post(server.url, MLP_BODY, connections=4, seconds=1)
        for streams in STREAMS:
            runs[streams] = _compare(server, frame, streams, seconds)
    finally:
        server.close()
    return runs


def _compare(server: ModelServer, frame: bytes, streams: int, seconds: float) -> dict:
    """gRPC and REST in turns of ``seconds / ROUNDS``, each going first in every other round:
    on a shared machine the load of others moves a figure by a third from one second to the
    next, and turns give both protocols the same share of it."""
    grpc, rest = [], []
    turn = max(1.0, seconds / ROUNDS)
    pid = server.process.popen.pid
    for round_ in range(ROUNDS):
        for protocol in (("grpc", "rest") if round_ % 2 == 0 else ("rest", "grpc")):
            used = _cpu_seconds(pid)
            if protocol == "rest":
                run = wrk.post(server.url, MLP_BODY, connections=streams, seconds=turn)
                run["cpu"] = _cpu_seconds(pid) - used
                rest.append(run)
                continue
            ok, not_ok = _grpc_answers(server)
            run = h2load(server.grpc, frame, streams=streams, seconds=turn)
            run["cpu"] = _cpu_seconds(pid) - used
            after = _grpc_answers(server)
            run["ok"], run["not_ok"] = after[0] - ok, after[1] - not_ok
            grpc.append(run)
    return {"grpc": _merged(grpc, ("requests", "failed", "ok", "not_ok", "cpu"), ("mean",)),
            "rest": _merged(rest, ("requests", "non2xx", "errors", "cpu"), ("p50", "p99"))}


def _cpu_seconds(pid: int) -> float:
    """The CPU time a process has used so far, user and system (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _merged(runs: list[dict], counts: tuple[str, ...], times: tuple[str, ...]) -> dict:
    """Turns as one run: counts added, rates averaged, times as their median turn's, max the
    largest."""
    merged = {key: sum(run[key] for run in runs) for key in counts}
    merged["requests_per_s"] = statistics.mean(run["requests_per_s"] for run in runs)
    merged.update({key: statistics.median(run[key] for run in runs) for key in times})
    merged["max"] = max(run["max"] for run in runs)
    return merged


def grpc_load_rows(runs: dict) -> list[tuple]:
    rows = []
    for streams in STREAMS:
        grpc, rest = runs[streams]["grpc"], runs[streams]["rest"]
        ratio = grpc["requests_per_s"] / rest["requests_per_s"]
        cpu = (grpc["cpu"] / grpc["requests"]) / (rest["cpu"] / rest["requests"])
        not_ok = grpc["not_ok"] + grpc["failed"]
        rows += [
            (f"Serving, gRPC predict, mlp, one example (h2load, {streams} streams)",
             f"{grpc['requests_per_s']:,.0f} req/s, mean {ms(grpc['mean'])}, max "
             f"{ms(grpc['max'])}, {not_ok:,.0f} not OK of {grpc['requests']:,}; server CPU "
             f"{ms(grpc['cpu'] / grpc['requests'])} a call",
             f"{ratio:.2f}x REST's req/s (wrk, {streams} connections); {cpu:.2f}x its CPU a "
             "request", ">= 1.0x, all OK",
             ratio >= 1.0 and not_ok == 0),
            (f"Serving, REST predict, mlp, one example (wrk, {streams} connections)",
             f"{rest['requests_per_s']:,.0f} req/s, p50 {ms(rest['p50'])}, p99 "
             f"{ms(rest['p99'])}, {rest['non2xx'] + rest['errors']} failed; server CPU "
             f"{ms(rest['cpu'] / rest['requests'])} a request", "baseline", "",
             None)]
    return rows


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = grpc_load_run(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0, Path(tmp),
                               *sys.argv[2:])
        print(json.dumps(result, indent=1))
        for row in grpc_load_rows(result):
            print(" | ".join(str(cell) for cell in row))
