"""The Open Inference Protocol (KServe V2) on the model server (issue 30), with real clients:
Triton's ``tritonclient`` (http and grpc, sync and asyncio) running the logic of its repository's
examples unchanged (src/python/examples/simple_http_infer_client.py, simple_grpc_infer_client.py,
simple_http_health_metadata.py) on a SavedModel shaped like Triton's ``simple``; the same input
through all four fronts; every datatype through JSON, binary data, raw and typed gRPC contents;
bad requests and client-stated sizes; the repository extension. One server for the module, run
from a model config file (so the repository extension is on).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import struct
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from harness.processes import free_ports
from tests import oip_models, tfs_models
from tests.helpers import warm
from tests.test_model_server import config_file
from shared.tfcompat import tf  # first: it sets TensorFlow's environment before the import

from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

MODELS = {"simple": oip_models.simple, "echo": oip_models.echo_all,
          "sum-model": oip_models.sum_model, "gate": oip_models.gate}
A = np.arange(16, dtype=np.int32)[None]
B = np.ones((1, 16), np.int32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("oip")
    for name, build in MODELS.items():
        (root / name).mkdir()
        tfs_models.publish(root / name, 1, build)
    flag = config_file(root / "models.config", {name: root / name for name in MODELS})
    rest, grpc_port = free_ports(2)
    process = warm("consumer.model_server", f"--rest_api_port={rest}", f"--port={grpc_port}",
                   flag, "--max_request_elements=4096", f"--work_dir={root / 'work'}",
                   "--rest_api_num_threads=1")  # one held request holds every REST worker
    process.wait_for(lambda e: e["event"] == "serving", timeout=60)
    for name in MODELS:
        process.wait_seen(lambda e, n=name: e["event"] == "model_loaded" and
                          e["path"] == str(root / n / "1"), timeout=60)
    process.rest, process.grpc = f"localhost:{rest}", f"localhost:{grpc_port}"
    yield process
    assert process.terminate() == 0, process.stderr
    assert not tracebacks(process), tracebacks(process)
    assert "Traceback" not in process.stderr and "Warning" not in process.stderr, \
        process.stderr[-3000:]


def tracebacks(process, since: int = 0) -> list[dict]:
    """The server's log events from ``since`` on that carry a traceback (a request that failed
    in our code, or one gRPC itself caught): a client's mistake must leave none."""
    return [e for e in process.events[since:] if "exception" in e or
            e["event"] == "request_failed"]


def simple_inputs(module, binary: bool = True) -> list:
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"),
              module.InferInput("INPUT1", [1, 16], "INT32")]
    for tensor, data in zip(inputs, (A, B)):
        if module in (httpclient, httpaio):
            tensor.set_data_from_numpy(data, binary_data=binary)
        else:
            tensor.set_data_from_numpy(data)
    return inputs


def check_simple(result) -> None:
    assert (result.as_numpy("OUTPUT0") == A + B).all()
    assert (result.as_numpy("OUTPUT1") == A - B).all()


@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_triton_examples(server, module):
    """simple_{http,grpc}_infer_client.py and simple_http_health_metadata.py, as written but
    for the server's name (ours is tf-handoff, not triton) and the statistics extension (not
    ours): health, metadata, an unknown model, infer with outputs asked for (binary and JSON on
    http) and with none."""
    client = module.InferenceServerClient(server.rest if module is httpclient else server.grpc)
    if module is httpclient:
        assert client.is_server_live(query_params={"test_1": 1, "test_2": 2})
    else:
        assert client.is_server_live()
    assert client.is_server_ready() and client.is_model_ready("simple")
    assert not client.is_model_ready("simple", "7")
    metadata = client.get_server_metadata()
    name = metadata["name"] if module is httpclient else metadata.name
    assert name == "tf-handoff"
    metadata = client.get_model_metadata("simple", as_json=True) if module is grpcclient else \
        client.get_model_metadata("simple", query_params={"test_1": 1, "test_2": 2})
    assert metadata["name"] == "simple" and metadata["platform"] == "tensorflow_savedmodel"
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]])
            for t in metadata["inputs"]] == [("INPUT0", "INT32", [-1, 16]),
                                             ("INPUT1", "INT32", [-1, 16])]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in caught.value.message()
    outputs = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
    check_simple(client.infer("simple", simple_inputs(module), outputs=outputs,
                              headers={"test": "1"}))
    check_simple(client.infer("simple", simple_inputs(module), outputs=None))
    if module is httpclient:  # JSON both ways
        result = client.infer("simple", simple_inputs(module, binary=False), outputs=[
            module.InferRequestedOutput(n, binary_data=False) for n in ("OUTPUT0", "OUTPUT1")])
        assert result.get_response()["outputs"][0]["data"] == (A + B).ravel().tolist()
        check_simple(result)
    client.close()


def test_triton_asyncio_clients(server):
    async def run():
        for module, url in ((httpaio, server.rest), (grpcaio, server.grpc)):
            client = module.InferenceServerClient(url)
            assert await client.is_server_ready()
            results = await asyncio.gather(*[
                client.infer("simple", simple_inputs(module)) for _ in range(4)])
            for result in results:
                check_simple(result)
            await client.close()
    asyncio.run(run())


def test_one_answer_through_four_fronts(server):
    """The same input through TF Serving's REST and gRPC Predict and the OIP's REST and gRPC
    ModelInfer gets the same values from the same version."""
    rest = requests.post(f"http://{server.rest}/v1/models/simple:predict", json={
        "inputs": {"INPUT0": A.tolist(), "INPUT1": B.tolist()}}, timeout=10).json()["outputs"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "simple"
    request.inputs["INPUT0"].CopyFrom(tf.make_tensor_proto(A))
    request.inputs["INPUT1"].CopyFrom(tf.make_tensor_proto(B))
    with grpc.insecure_channel(server.grpc) as channel:
        tfs = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 10)
    oip_rest = httpclient.InferenceServerClient(server.rest).infer("simple",
                                                                   simple_inputs(httpclient))
    oip_grpc = grpcclient.InferenceServerClient(server.grpc).infer("simple",
                                                                   simple_inputs(grpcclient))
    for key in ("OUTPUT0", "OUTPUT1"):
        want = np.array(rest[key])
        assert (tf.make_ndarray(tfs.outputs[key]) == want).all()
        assert (oip_rest.as_numpy(key) == want).all() and (oip_grpc.as_numpy(key) == want).all()
    assert (want == A - B).all()


def echo_values() -> dict[str, np.ndarray]:
    """A [2, 3] tensor of each datatype, with its extremes where it has them."""
    values = {}
    for name in oip_models.ALL_DTYPES:
        if name == "BYTES":
            values[name] = np.array([b"a", b"", "\u00e9t\u00e9".encode(), b"x" * 40, b"\x00z",
                                     b"end"], dtype=object).reshape(2, 3)
        elif name == "BOOL":
            values[name] = np.array([[True, False, True], [False, False, True]])
        else:
            dtype = np.dtype(name.lower().replace("fp", "float"))
            info = np.finfo(dtype) if name.startswith("FP") else np.iinfo(dtype)
            values[name] = np.array([info.min, info.max, 0, 1, 2, 3], dtype=dtype).reshape(2, 3)
    return values


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips_over_http(server, binary):
    values = echo_values()
    client = httpclient.InferenceServerClient(server.rest)
    inputs = []
    for name, array in values.items():
        tensor = httpclient.InferInput(name, list(array.shape), name)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in values]
    result = client.infer("echo", inputs, outputs=outputs)
    for name, array in values.items():
        got = result.as_numpy(name)
        if name == "BYTES" and not binary:  # JSON carries text: tritonclient gives str
            got = np.vectorize(str.encode, otypes=[object])(got)
        assert got.shape == array.shape and (got == array).all(), name
        if name != "BYTES":
            assert got.dtype == array.dtype, name


def test_every_datatype_round_trips_over_grpc(server):
    """Raw contents (tritonclient's way) and typed contents (the spec's other way, sent with
    Triton's own message classes) for every datatype typed contents can carry."""
    values = echo_values()
    client = grpcclient.InferenceServerClient(server.grpc)
    inputs = []
    for name, array in values.items():
        tensor = grpcclient.InferInput(name, list(array.shape), name)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer("echo", inputs)
    for name, array in values.items():
        got = result.as_numpy(name)
        assert got.shape == array.shape and (got == array).all(), name
    typed = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
             "BYTES": "bytes_contents"}
    request = service_pb2.ModelInferRequest(model_name="echo")
    request.parameters["signature_name"].string_param = "typed"  # all but FP16 (raw only)
    for name, array in values.items():
        if name != "FP16":
            tensor = request.inputs.add(name=name, datatype=name, shape=list(array.shape))
            getattr(tensor.contents, typed[name]).extend(array.ravel().tolist())
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, timeout=10)
        for output, raw in zip(response.outputs, response.raw_output_contents):
            if output.name == "BYTES":
                assert raw == b"".join(struct.pack("<I", len(v)) + v
                                       for v in values["BYTES"].ravel())
                continue
            got = np.frombuffer(raw, dtype=values[output.name].dtype)
            assert (got == values[output.name].ravel()).all(), output.name
        assert len(response.outputs) == len(values) - 1


def post(server, path: str, body: bytes, headers: dict | None = None) -> requests.Response:
    return requests.post(f"http://{server.rest}{path}", data=body, headers=headers, timeout=10)


def infer_body(inputs: list, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


INPUT0 = {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
INPUT1 = {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}

BAD_REQUESTS = {  # body -> words of its one-line error; each a 400, never a 500
    "not_json": (b"{inputs", "does not parse"),
    "not_object": (b"[1, 2]", "must be an object"),
    "no_inputs": (b"{}", "must have 'inputs'"),
    "unknown_datatype": (infer_body([{**INPUT0, "datatype": "INT322"}, INPUT1]),
                         "unsupported datatype 'INT322'"),
    "wrong_datatype": (infer_body([{**INPUT0, "datatype": "FP32"}, INPUT1]),
                       "datatype FP32, where the model takes INT32"),
    "float_for_int": (infer_body([{**INPUT0, "data": [0.5] * 16}, INPUT1]), "not all of"),
    "bool_for_int": (infer_body([{**INPUT0, "data": [True] * 16}, INPUT1]), "not all of"),
    "too_few_values": (infer_body([{**INPUT0, "data": [1]}, INPUT1]), "1 values, where"),
    "ragged": (infer_body([{**INPUT0, "data": [[1, 2], [3]]}, INPUT1]), "ragged"),
    "negative_dim": (infer_body([{**INPUT0, "shape": [-1, 16]}, INPUT1]), "dimensions >= 0"),
    "shape_over_bound": (infer_body([{**INPUT0, "shape": [1 << 20, 1 << 20]}, INPUT1]),
                         "--max_request_elements"),
    "json_over_bound": (infer_body([{**INPUT0, "shape": [1, 5000], "data": [1] * 5000}]),
                        "values and lists, over the limit"),
    "missing_input": (infer_body([INPUT0]), "missing INPUT1"),
    "unknown_input": (infer_body([INPUT0, INPUT1, {**INPUT1, "name": "X"}]),
                      "unexpected input 'X'"),
    "twice": (infer_body([INPUT0, INPUT0, INPUT1]), "given twice"),
    "unknown_output": (infer_body([INPUT0, INPUT1], outputs=[{"name": "NOPE"}]), "NOPE"),
    "out_of_range": (infer_body([{**INPUT0, "data": [2**40] * 16}, INPUT1]), "out of the range"),
    "no_data": (infer_body([{k: v for k, v in INPUT0.items() if k != "data"}, INPUT1]),
                "neither 'data' nor"),
    "bad_size_param": (infer_body([{**INPUT0, "parameters": {"binary_data_size": -3}},
                                   INPUT1]), "binary_data_size must be"),
    "bad_signature": (infer_body([INPUT0, INPUT1], parameters={"signature_name": "x"}),
                      'signature key "x" not found'),
    "bad_parameters": (infer_body([INPUT0, INPUT1], parameters=[1]), "must be an object"),
    # a hostile client's sizes and forms: each was a 500 with a traceback, or worse
    "zero_and_huge_dims": (infer_body([{**INPUT0, "shape": [0, 2**62, 2**62], "data": []},
                                       INPUT1]), "other dimensions multiply to"),
    "rank_over_64": (infer_body([{**INPUT0, "shape": [1] * 100, "data": [1]}, INPUT1]),
                     "100 dimensions, over the limit of 64"),
    "outputs_not_a_list": (infer_body([INPUT0, INPUT1], outputs=5), "'outputs' must be a list"),
    "output_twice": (infer_body([INPUT0, INPUT1], outputs=[{"name": "OUTPUT0"}] * 2),
                     "duplicate output tensor alias: OUTPUT0"),
    "binary_data_not_bool": (infer_body([INPUT0, INPUT1], outputs=[
        {"name": "OUTPUT0", "parameters": {"binary_data": "false"}}]), "must be true or false"),
    "binary_output_not_bool": (infer_body([INPUT0, INPUT1], parameters={
        "binary_data_output": [1]}), "must be true or false"),
    "string_among_ints": (infer_body([{**INPUT0, "data": ["x" * 100] + [1] * 15}, INPUT1]),
                          "not all of datatype INT32"),
}
ECHO_BAD_REQUESTS = {  # to the echo model, whose inputs are every datatype
    "fp16_past_range": (infer_body([{"name": "FP16", "shape": [1], "datatype": "FP16",
                                     "data": [1e10]}]), "out of the range of FP16"),
    "fp32_past_range": (infer_body([{"name": "FP32", "shape": [1], "datatype": "FP32",
                                     "data": [1e300]}]), "out of the range of FP32"),
    "number_among_bytes": (infer_body([{"name": "BYTES", "shape": [2], "datatype": "BYTES",
                                        "data": ["a", 2]}]), "not all of datatype BYTES"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS) + list(ECHO_BAD_REQUESTS))
def test_bad_request_is_a_400_with_one_line(server, case):
    model = "simple" if case in BAD_REQUESTS else "echo"
    body, words = BAD_REQUESTS.get(case) or ECHO_BAD_REQUESTS[case]
    answer = post(server, f"/v2/models/{model}/infer", body)
    assert answer.status_code == 400, (answer.status_code, answer.text)
    assert list(answer.json()) == ["error"] and "\n" not in answer.json()["error"]
    assert words in answer.json()["error"], answer.text


def binary_request(header_extra: dict | None = None, data: bytes | None = None,
                   length: int | None = None, cut: int = 0) -> tuple[bytes, dict]:
    """INPUT0 and INPUT1 as binary data (``cut``: bytes less of INPUT0's, and its size so)."""
    raw0, raw1 = A.tobytes()[:64 - cut], B.tobytes()
    header = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32",
         "parameters": {"binary_data_size": len(raw0)}},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32",
         "parameters": {"binary_data_size": len(raw1)}}], **(header_extra or {})}).encode()
    body = header + (raw0 + raw1 if data is None else data)
    return body, {"Inference-Header-Content-Length": str(len(header) if length is None
                                                             else length)}


def test_binary_sizes_are_checked_against_the_body(server):
    """Every size the client states, against the bytes it sent, before any is spent."""
    body, headers = binary_request()
    answer = post(server, "/v2/models/simple/infer", body, headers)
    assert answer.status_code == 200, answer.text
    cases = {"over the body": binary_request(length=10**9),
             "must be a number": binary_request(length=None),
             "64 is past the 0 bytes": binary_request(data=A.tobytes()),
             "2 bytes of binary data follow": binary_request(data=A.tobytes() + B.tobytes() +
                                                             b"xx"),
             "60 bytes of data, where shape": binary_request(cut=4)}
    cases["must be a number"][1]["Inference-Header-Content-Length"] = "12x"
    for words, (body, headers) in cases.items():
        answer = post(server, "/v2/models/simple/infer", body, headers)
        assert answer.status_code == 400 and words in answer.json()["error"], answer.text
    # BYTES elements whose stated lengths run past the data
    bad = struct.pack("<I", 1000) + b"ab"
    header = json.dumps({"inputs": [{"name": "BYTES", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(bad)}}]}).encode()
    answer = post(server, "/v2/models/echo/infer", header + bad,
                  {"Inference-Header-Content-Length": str(len(header))})
    assert answer.status_code == 400 and "past the end" in answer.json()["error"], answer.text


def test_an_empty_batch_in_json(server):
    """A tensor of 0 elements (shape [0, 16], data []) is a request like any other: it was a
    500 (the JSON reader asked numpy's kind of an empty array, which has none)."""
    answer = post(server, "/v2/models/simple/infer", infer_body(
        [{**INPUT0, "shape": [0, 16], "data": []}, {**INPUT1, "shape": [0, 16], "data": []}]))
    assert answer.status_code == 200, answer.text
    assert [(o["shape"], o["data"]) for o in answer.json()["outputs"]] == [([0, 16], [])] * 2


def peak_rss_kb(server) -> int:
    with open(f"/proc/{server.popen.pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def test_json_strings_are_not_widened(server):
    """A 120 KB request of one 50,000-character string and 1,999 short ones: numpy's
    ``np.array`` of it would be 2,000 strings of 50,000 UCS-4 characters each, 400 MB (the
    same with 1 MB and 8 GB was measured: 8.4 GB peak, 11 s). The JSON values are checked
    and the BYTES built one by one, so the server's peak memory barely moves."""
    data = ["x" * 50_000] + ["a"] * 1_999
    before = peak_rss_kb(server)
    for datatype, words in (("BYTES", "expected 13 inputs"), ("INT32", "not all of datatype")):
        answer = post(server, "/v2/models/echo/infer", infer_body(
            [{"name": datatype, "shape": [2000], "datatype": datatype, "data": data}]))
        assert answer.status_code == 400 and words in answer.json()["error"], answer.text
    grown_mb = (peak_rss_kb(server) - before) / 1024
    assert grown_mb < 150, f"peak memory grew {grown_mb:.0f} MB for a 120 KB request"


def test_paths_and_versions(server):
    base = f"http://{server.rest}/v2"
    assert requests.get(f"{base}/health/live", timeout=5).status_code == 200
    assert requests.get(f"{base}/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{base}/models/simple/versions/1/ready", timeout=5).status_code == 200
    assert requests.get(f"{base}/models/simple/versions/2/ready", timeout=5).status_code == 400
    assert requests.get(f"{base}/models/simple/versions/1", timeout=5).json()["versions"] == ["1"]
    answer = requests.post(f"{base}/models/simple/versions/1/infer", data=infer_body(
        [INPUT0, INPUT1], id="req-7", parameters={"signature_name": "sum_only"}), timeout=5)
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
    doc = answer.json()
    assert doc["id"] == "req-7" and doc["model_version"] == "1"
    assert [o["name"] for o in doc["outputs"]] == ["OUTPUT0"]  # the other signature's
    for path, status in (("/models/simple/versions/9/infer", 404), ("/nope", 404),
                         ("/models/nope/infer", 404),
                         # digits str.isdigit takes and int() does not, or takes as 1: no
                         # version of ours (they were a 500, and version 1)
                         ("/models/simple/versions/%C2%B2/infer", 404),
                         ("/models/simple/versions/%EF%BC%91/infer", 404)):
        answer = requests.post(f"{base}{path}", data=infer_body([INPUT0, INPUT1]), timeout=5)
        assert answer.status_code == status and "error" in answer.json(), (path, answer.text)
    for path, status in (("/models/simple/versions/%C2%B2/ready", 400),
                         ("/models/simple/versions/%C2%B2", 404)):
        answer = requests.get(f"{base}{path}", timeout=5)
        assert answer.status_code == status and "error" in answer.json(), (path, answer.text)


def test_grpc_bad_requests_get_their_codes(server):
    """Each a gRPC code with one line; and the service is listed by reflection, beside
    TF Serving's."""
    with grpc.insecure_channel(server.grpc) as channel:
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        listed = {s.name for a in answers for s in a.list_services_response.service}
    assert {"inference.GRPCInferenceService", "tensorflow.serving.PredictionService"} <= listed
    since = len(server.events)
    client = grpcclient.InferenceServerClient(server.grpc)
    shapes = {"over the limit": [1 << 20, 1 << 20], "multiply to": [0, 2**62, 2**62],
              "over the limit of 64": [1] * 100}
    cases = []
    for words, shape in shapes.items():
        tensor = grpcclient.InferInput("INPUT0", shape, "INT32")
        tensor._raw_content = b""  # a shape far over a bound, with no data behind it
        cases.append(([tensor], words))
    for inputs, words in cases + [(simple_inputs(grpcclient)[:1], "missing INPUT1")]:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("simple", inputs)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
        assert words in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("nope", simple_inputs(grpcclient))
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    for call in (lambda: client.infer("simple", simple_inputs(grpcclient), model_version="²"),
                 lambda: client.get_model_metadata("simple", "²")):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "StatusCode.NOT_FOUND", caught.value
    assert not client.is_model_ready("simple", "²")
    assert not tracebacks(server, since), tracebacks(server, since)
    with grpc.insecure_channel(server.grpc) as channel:  # bytes that are no ModelInferRequest
        with pytest.raises(grpc.RpcError) as unreadable:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\xff\xff",
                                                                              timeout=5)
    assert unreadable.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def open_gate(fifo, wait: float = 10.0) -> bool:
    """Open ``fifo`` for writing and close it, which lets the reader waiting in its open go on;
    False if no reader came within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError as err:  # ENXIO: no reader has it open yet
            if err.errno != errno.ENXIO or time.monotonic() > deadline:
                return False
            time.sleep(0.005)


def test_probes_answer_while_the_worker_is_held_and_unload_waits(server, tmp_path):
    """A request held in flight at the gate model, naming version 1, holds the server's one
    REST worker, and another request waits in the queue behind it. Liveness, readiness and a
    model's readiness still answer at once: they run on the event loop, never behind
    inferences (a Kubernetes probe that waited would restart or drain a busy server). Then the
    model is unloaded (over gRPC: REST's worker is held): the unload and new requests are
    answered at once (NOT_FOUND), the unload finishes (the model's metrics go), and only then
    is the gate opened: the held request finishes on the version it holds, answered 200 by
    it, so its session was closed after its last request, not under it."""
    first, last = tmp_path / "in", tmp_path / "out"
    os.mkfifo(first)
    os.mkfifo(last)
    answers: dict = {}

    def send(name: str, model: str, body: bytes) -> None:
        answers[name] = post(server, f"/v2/models/{model}/infer", body)
    held = threading.Thread(target=send, args=("held", "gate/versions/1", infer_body(
        [{"name": "paths", "shape": [2], "datatype": "BYTES", "data": [str(first),
                                                                      str(last)]}])))
    queued = threading.Thread(target=send, args=("queued", "simple", infer_body([INPUT0,
                                                                                 INPUT1])))
    client = grpcclient.InferenceServerClient(server.grpc)
    no_paths = grpcclient.InferInput("paths", [0], "BYTES")
    no_paths.set_data_from_numpy(np.array([], dtype=object))
    assert client.infer("gate", [no_paths]).as_numpy("y") == 7  # its metrics series are made
    held.start()
    try:
        assert open_gate(first), "the held request never came in"  # now held at the last
        queued.start()
        base, slowest = f"http://{server.rest}/v2", 0.0
        for path in ("/health/live", "/health/ready", "/models/simple/ready"):
            started = time.perf_counter()
            assert requests.get(base + path, timeout=5).status_code == 200, path
            slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 1.0, f"a probe took {slowest:.2f} s with the worker held"
        client.unload_model("gate")
        assert not client.is_model_ready("gate")
        with pytest.raises(InferenceServerException) as caught:
            client.infer("gate", [no_paths])
        assert caught.value.status() == "StatusCode.NOT_FOUND", caught.value
        # the unload is done (its versions closed, but for the one held, and the model's
        # metrics series gone) while the request still waits at its gate
        metrics, deadline = f"http://{server.rest}/monitoring/prometheus/metrics", \
            time.monotonic() + 20
        while 'model_name="gate"' in requests.get(metrics, timeout=5).text:
            assert time.monotonic() < deadline, "the unload did not finish in 20 s"
            time.sleep(0.02)
        assert answers == {}, "a request was answered while the worker was held"
    finally:
        open_gate(last)
        for thread in (held, queued):
            if thread.ident is not None:  # started
                thread.join(timeout=30)
    held = answers["held"]
    assert held.status_code == 200, held.text
    assert held.json()["model_version"] == "1" and held.json()["outputs"][0]["data"] == [7]
    assert answers["queued"].status_code == 200, answers["queued"].text
