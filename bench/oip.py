"""The Open Inference Protocol's throughput beside TF Serving's gRPC Predict, on one server in
one run: the mlp's one-example predict as TF Serving's ``Predict`` and as the OIP's
``ModelInfer`` (both sent by ``h2load``, a native HTTP/2 client, as prepared gRPC frames), and
as OIP REST with binary data and TF Serving's REST JSON (both by ``wrk``), 4 streams each.

h2load reads no trailers, so every call it counts as done is checked against the server's own
count of gRPC calls answered OK, and a sample ModelInfer is read back with a real client.

``python -m bench.oip [seconds]`` runs it alone and prints the rows; ``oip_run(seconds, tmp)``
and ``oip_rows(run)`` are what ``make bench`` calls.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import ms, start, wrk
from bench.grpc_load import grpc_frame, h2load, predict_request
from bench.throughput import MLP_BODY, ModelServer

STREAMS = 4
_INFER = "/inference.GRPCInferenceService/ModelInfer"
_PREDICT = "/tensorflow.serving.PredictionService/Predict"
def features() -> np.ndarray:
    return np.asarray(json.loads(MLP_BODY)["instances"], np.float32)


def infer_request(model: str) -> bytes:
    """A serialized ModelInferRequest for the mlp's example, in raw contents (tritonclient's
    way)."""
    from consumer.serving import oip_pb2

    array = features()
    request = oip_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="features", datatype="FP32", shape=list(array.shape))
    request.raw_input_contents.append(array.tobytes())
    return request.SerializeToString()


def binary_body() -> tuple[bytes, int]:
    """The same example as an OIP REST request with binary data: (body, JSON header length)."""
    array = features()
    header = json.dumps({"inputs": [{"name": "features", "datatype": "FP32",
                                     "shape": list(array.shape),
                                     "parameters": {"binary_data_size": array.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + array.tobytes(), len(header)


def _grpc_ok(server: ModelServer, endpoint: str) -> float:
    return server.metric('handoff_requests_total{(?=[^}]*protocol="grpc")'
                         f'(?=[^}}]*endpoint="{endpoint}")(?=[^}}]*code="OK")')


def _sample(port: int, message: bytes) -> str:
    """One ModelInfer from a real gRPC client: its outputs' names and shapes."""
    import grpc

    from consumer.serving import oip_pb2

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = oip_pb2.ModelInferResponse.FromString(
            channel.unary_unary(_INFER)(message, timeout=30))
    return ", ".join(f"{o.name} {list(o.shape)}" for o in answer.outputs)


def oip_run(seconds: float, tmp: Path) -> dict:
    root = tmp / "oip"
    seed = start("bench.publisher", "--export-dir", root / "mlp", "--versions", 1, "--interval",
                 0, "--model", "mlp", "--kind", "savedmodel")
    assert seed.wait(timeout=300) == 0, seed.stderr
    server = ModelServer("mlp", root / "mlp" / "savedmodels", root / "work")
    predict, infer = grpc_frame(predict_request("mlp", features().tolist())), \
        grpc_frame(infer_request("mlp"))
    body, header = binary_body()
    oip_url = f"http://127.0.0.1:{server.rest}/v2/models/mlp/infer"
    run: dict = {}
    try:
        run["sample"] = _sample(server.grpc, infer_request("mlp"))
        h2load(server.grpc, infer, streams=STREAMS, seconds=1, path=_INFER)  # warm up
        for name, path, frame, endpoint in (("tfs_grpc", _PREDICT, predict, "predict"),
                                            ("oip_grpc", _INFER, infer, "oip_infer")):
            before = _grpc_ok(server, endpoint)
            run[name] = h2load(server.grpc, frame, streams=STREAMS, seconds=seconds, path=path)
            run[name]["ok"] = _grpc_ok(server, endpoint) - before
        run["oip_rest"] = wrk.post(oip_url, body, connections=STREAMS, seconds=seconds, headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header)})
        run["tfs_rest"] = wrk.post(server.url, MLP_BODY, connections=STREAMS, seconds=seconds)
    finally:
        server.close()
    return run


def oip_rows(run: dict) -> list[tuple]:
    tfs = run["tfs_grpc"]
    rows = [("Serving, TF Serving gRPC Predict, mlp, one example (h2load, 4 streams)",
             _grpc(tfs), "baseline", "", None)]
    oip = run["oip_grpc"]
    ratio = oip["requests_per_s"] / tfs["requests_per_s"]
    not_ok = max(0, oip["requests"] - oip["ok"]) + oip["failed"]
    rows.append(("Serving, OIP gRPC ModelInfer, raw contents, same server (h2load, 4 streams)",
                 _grpc(oip), f"{ratio:.2f}x TF Serving's gRPC Predict", ">= 0.8x, all OK",
                 ratio >= 0.8 and not_ok == 0))
    for name, label, baseline in (
            ("oip_rest", "OIP REST infer, binary data", "TF Serving's gRPC Predict"),
            ("tfs_rest", "TF Serving REST predict, JSON", "TF Serving's gRPC Predict")):
        load = run[name]
        rows.append((f"Serving, {label}, same server (wrk, 4 connections)",
                     f"{load['requests_per_s']:,.0f} req/s, p50 {ms(load['p50'])}, p99 "
                     f"{ms(load['p99'])}, {load['non2xx'] + load['errors']} failed",
                     f"{load['requests_per_s'] / tfs['requests_per_s']:.2f}x {baseline}", "",
                     None))
    return rows


def _grpc(load: dict) -> str:
    not_ok = max(0, load["requests"] - load.get("ok", load["requests"])) + load["failed"]
    return (f"{load['requests_per_s']:,.0f} req/s, mean {ms(load['mean'])}, "
            f"{not_ok:,.0f} not OK of {load['requests']:,}")


def available() -> bool:
    return shutil.which("h2load") is not None and wrk.available()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = oip_run(float(sys.argv[1]) if len(sys.argv) > 1 else 5.0, Path(tmp))
        print(json.dumps(result, indent=1))
        for row in oip_rows(result):
            print(" | ".join(str(cell) for cell in row))
