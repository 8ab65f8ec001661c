"""A client's mistakes over REST (and gRPC where the same call runs), each answered with TF
Serving's status and one line of valid UTF-8 JSON, never a 500 with a traceback in the log; and
the order and cost of a body's parse: parsed before the model is looked up, big classify and
regress bodies in the helper process, one version held from the parse to the run.

One real server process for the module, real HTTP and gRPC clients. TF Serving's source is cited
where it says what the answer is (tensorflow/serving: ``util/json_tensor.cc``,
``model_servers/http_rest_api_handler.cc``; rapidjson's ``reader.h``; TF's
``example_proto_fast_parsing.cc``).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from pathlib import Path

import grpc
import pytest

from harness.processes import free_ports
from harness.rest_client import RestClient
from tests import tfs_models
from tests.helpers import warm
from tests.test_model_server import config_file, loaded

from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from shared.tfcompat import tf, v1  # noqa: E402

BIG = 300 * 1024  # over offload.OFFLOAD_BYTES (256 KiB): parsed in the helper process


def no_inputs(path: Path) -> Path:
    """Signatures with outputs and no inputs: ``serving_default`` and ``named``."""
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0.0, name="unused")
        y = tf.identity(tf.constant([1.0]), name="y")
        signatures = {key: tfs_models._signature({}, {"y": y}) for key in ("serving_default",
                                                                          "named")}
    return tfs_models._save(path, graph, signatures)


def plus_version(path: Path, dtype, version: int) -> Path:
    """y = float(x[1]) + version, x of ``dtype``: each version says who answered, and versions
    of the two dtypes read the same JSON integers as different arrays. The answer is one value,
    so that a request's time is mostly its body's parse."""
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0.0, name="unused")
        x = v1.placeholder(dtype, [None], name="x")
        y = tf.identity(tf.cast(x[1], tf.float32) + float(version), name="y")
        signatures = {"serving_default": tfs_models._signature({"x": x}, {"y": y})}
    return tfs_models._save(path, graph, signatures)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    builders = {"hpt": tfs_models.half_plus_two,
                "strings": lambda p: tfs_models.echo(p, {"s": "DT_STRING"}),
                "floats": lambda p: tfs_models.echo(p, {"f": "DT_FLOAT"}),
                "no_inputs": no_inputs,
                "swap": lambda p: plus_version(p, tf.float32, 1)}
    bases = {name: root / name for name in builders}
    for name, build in builders.items():
        build(bases[name] / "1")
    rest, port = free_ports(2)
    process = warm("consumer.model_server", config_file(root / "models.config", bases),
                   f"--rest_api_port={rest}", f"--port={port}", "--work_dir", root / "work")
    for base in bases.values():
        loaded(process, base, 1)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = RestClient(rest)
    yield process, client, prediction_service_pb2_grpc.PredictionServiceStub(channel), bases
    client.close()
    channel.close()
    assert process.terminate() == 0, process.stderr
    # every mistake was answered as one: none reached the catch-all for our own defects
    assert "Traceback" not in process.stderr and not process.named("request_failed"), \
        process.named("request_failed") or process.stderr[-3000:]


def post(client: RestClient, path: str, body: bytes) -> tuple[int, str]:
    """Status and the error text of a call whose answer must be one line of UTF-8 JSON."""
    status, _, raw = client.call("POST", path, body, raw=True)
    assert b"\n" not in raw, raw[:300]  # one line: a newline in a message is escaped
    answer = json.loads(raw.decode("utf-8"))  # strict: bytes that are not UTF-8 fail here
    return status, answer.get("error", answer)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1.0" + b"]" * depth


# -- item 12: client mistakes that were 500s ---------------------------------------------------


def test_json_nested_past_numpys_dimensions_is_a_400(server):
    """numpy holds at most 64 dimensions; Python's parser goes ~1,000 deep. TF Serving's
    ``GetDenseTensorShape`` and ``FillTensorProto`` (json_tensor.cc) set no limit below TF's 254
    dimensions, so 64 deep is served, and deeper is our 400 (a difference the README lists)."""
    _, client, _, _ = server
    status, answer = post(client, "/v1/models/floats:predict", b'{"inputs": ' + nested(64) + b"}")
    assert status == 200, answer  # the most numpy holds: answered
    status, answer = post(client, "/v1/models/floats:predict",
                          b'{"instances": ' + nested(64) + b"}")
    assert status == 200, answer  # 63 per row, and the batch dimension
    for depth in (65, 70, 500, 900):
        for key, rank in ((b"inputs", depth), (b"instances", depth)):
            status, error = post(client, "/v1/models/floats:predict",
                                 b'{"' + key + b'": ' + nested(depth) + b"}")
            assert (status, error) == (400, f"Input: f has {rank} dimensions; this server takes "
                                            "at most 64 (numpy's limit; TF Serving's is TF's "
                                            "254)"), (depth, key)
    status, error = post(client, "/v1/models/strings:predict", b'{"inputs": ' + nested(70) + b"}")
    assert (status, error) == (400, "JSON Value: 1.0 Type: Number is not of expected type: "
                                    "string")  # TF Serving's own error comes first


@pytest.mark.parametrize("path, body, offset", [
    ("strings", b'{"instances": ["\\ud800"]}', 16),  # a high half alone
    ("strings", b'{"instances": ["ok", "x\\udc00"]}', 23),  # a low half alone
    ("strings", b'{"inputs": ["\\ud800\\u0041"]}', 13),  # a high half, then no low half
    ("hpt", b'{"signature_name": "classify_x_to_y", "examples": [{"x": 1.0, "s": "\\ud800"}]}',
     68),  # a classify feature
    ("hpt", b'{"signature_name": "regress_x_to_y", "context": {"s": "\\udbff"}, '
            b'"examples": [{"x": 1.0}]}', 55),  # a regress context
    ("strings", '{"é": 1, "instances": ["\\ud800"]}'.encode(), 25),  # offsets count bytes
])
def test_half_a_surrogate_pair_is_refused_as_rapidjson_refuses_it(server, path, body, offset):
    """rapidjson (TF Serving's parser, json_tensor.cc ``ParseJson``) refuses a ``\\u`` escape
    that is half a surrogate pair: ``kParseErrorStringUnicodeSurrogateInvalid`` in its
    reader.h, at the offset of the escape's backslash, in bytes. Python's parser took it, and
    the string could not be encoded: a 500."""
    _, client, _, _ = server
    verb = "predict" if path == "strings" else ("classify" if b"classify" in body else "regress")
    status, error = post(client, f"/v1/models/{path}:{verb}", body)
    assert (status, error) == (400, "JSON Parse error: The surrogate pair in string is invalid. "
                                    f"at offset: {offset}")


def test_a_whole_surrogate_pair_and_an_escaped_backslash_are_served(server):
    _, client, _, _ = server
    status, answer = post(client, "/v1/models/strings:predict",
                          b'{"instances": ["\\ud83d\\ude00", "\\\\ud800"], "x": NaN}')
    assert (status, answer) == (200, {"predictions": ["\U0001F600", "\\ud800"]})


def test_a_malformed_tf_example_is_a_400_over_rest_and_grpc(server):
    """TF's ``parse_example`` quotes the bytes it could not parse (example_proto_fast_parsing.cc:
    ``InvalidArgument("Could not parse example input, value: '", serialized, "'")``); bytes that
    are not UTF-8 made TF's binding raise ``UnicodeDecodeError`` in place of the error: a 500 on
    REST, an INTERNAL on gRPC. It is fixed where the session runs, so both fronts answer the
    same: INVALID_ARGUMENT, the bytes written ``\\xff``; TF's newlines kept."""
    _, client, stub, _ = server
    garbage = b"\xff\xfe\x01garbage"
    body = json.dumps({"signature_name": "regress_x_to_y",
                       "instances": [{"b64": base64.b64encode(garbage).decode()}]}).encode()
    status, error = post(client, "/v1/models/hpt:predict", body)
    assert (status, error) == (400, "Could not parse example input, value: "
                                    "'\\xff\\xfe\x01garbage'")
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "hpt", "regress_x_to_y"
    request.inputs["inputs"].CopyFrom(tf.make_tensor_proto([garbage], tf.string))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=30)
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Could not parse example input, value: "
                                          "'\\xff\\xfe\x01garbage'")
    # UTF-8 bytes are quoted as they are, a newline included (it was joined into a space)
    body = json.dumps({"signature_name": "regress_x_to_y",
                       "instances": [{"b64": base64.b64encode(b"\n\x03abc").decode()}]}).encode()
    assert post(client, "/v1/models/hpt:predict", body) == (
        400, "Could not parse example input, value: '\n\x03abc'")


def test_predict_on_a_signature_without_inputs_is_a_400(server):
    """json_tensor.cc, ``FillPredictRequestFromJson``: an empty input map is refused before
    ``instances`` or ``inputs`` is read: "Failed to get input map for signature: " and the
    name, DEFAULT for the default. Ours raised StopIteration on ``instances`` and ran the
    signature on ``{"inputs": {}}``."""
    _, client, _, _ = server
    for body in (b'{"instances": [1.0]}', b'{"inputs": {}}', b'{"inputs": [1.0]}'):
        assert post(client, "/v1/models/no_inputs:predict", body) == (
            400, "Failed to get input map for signature: DEFAULT")
    assert post(client, "/v1/models/no_inputs:predict",
                b'{"signature_name": "named", "instances": [1.0]}') == (
        400, "Failed to get input map for signature: named")


# -- item 15: every error body is one line of valid UTF-8 JSON ---------------------------------


def test_a_clients_raw_bytes_echoed_in_an_error_keep_its_body_valid_utf8_json(server):
    """TF Serving quotes a value that is not of its input's type (json_tensor.cc ``TypeError``,
    via ``JsonValueToString``) and writes its bytes raw (``MakeJsonFromStatus``): bytes that are
    not UTF-8 made the body invalid JSON. We write them ``\\xff``; its newlines (an object is
    quoted on several lines) are kept, escaped, on the body's one line."""
    _, client, _, _ = server
    status, error = post(client, "/v1/models/hpt:predict", b'{"instances": ["\xff\xfe"]}')
    assert (status, error) == (400, "Failed to process element: 0 of 'instances' list. Error: "
                                    "INVALID_ARGUMENT: JSON Value: \"\\xff\\xfe\" Type: String "
                                    "is not of expected type: float")
    status, error = post(client, "/v1/models/hpt:predict",
                         b'{"instances": [1.0], "inputs": "\xc3\x28"}')
    assert status == 400 and error == ("JSON Value: {\n    \"instances\": [1.0],\n    "
                                       "\"inputs\": \"\\xc3(\"\n} Not formatted correctly "
                                       "expecting only one of 'inputs' or 'instances' keys to "
                                       "exist "), error
    status, error = post(client, "/v1/models/hpt:regress", b'{"examples": [{"x": 1.0}], '
                                                           b'"signature_name": "\xff"}')
    assert (status, error) == (400, "No signature was found with the name: \\xff")


# -- item 16: a body parses before the model is looked up, big or small -----------------------


def test_a_body_parses_before_the_model_is_looked_up_big_or_small(server):
    """http_rest_api_handler.cc ``ProcessPredictRequest``: ``FillPredictRequestFromJson`` runs
    ``ParseJson`` before ``get_tensorinfo_map`` (``GetInfoMap``, which looks the model up). A
    body of 256 KiB or more looked the model up first: 404 for what a small body got 400."""
    _, client, _, _ = server
    values = b"1.0," * (BIG // 4)
    for filler in (b"", values):
        status, error = post(client, "/v1/models/nosuch:predict",
                             b'{"instances": [' + filler + b"garbage]}")
        assert (status, error) == (400, "JSON Parse error: Invalid value. at offset: "
                                        f"{15 + len(filler)}"), len(filler)
        status, error = post(client, "/v1/models/nosuch:predict",
                             b'{"signature_name": 7, "instances": [' + filler + b"1.0]}")
        assert status == 400 and "'signature_name' key must be a string value." in error
        status, error = post(client, "/v1/models/nosuch:predict",
                             b'{"instances": [' + filler + b"1.0]}")
        assert (status, error) == (404, "Servable not found for request: Latest(nosuch)")
        status, error = post(client, "/v1/models/hpt:predict",
                             b'{"signature_name": "nope", "instances": [' + filler + b"1.0]}")
        assert (status, error) == (400, 'Serving signature name: "nope" not found in '
                                        "signature def")
    status, answer = post(client, "/v1/models/hpt/versions/1:predict",
                          b'{"instances": [' + values + b"1.0]}")
    assert status == 200 and answer["predictions"][:2] == [2.5, 2.5]


# -- item 17: big classify and regress bodies are parsed in the helper -------------------------


def _helper_cpu_seconds(server_pid: int) -> float:
    """The CPU time of the server's parse process (spawned by multiprocessing), 0 if none."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == server_pid and b"spawn_main" in (
                    stat.parent / "cmdline").read_bytes():
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
    return 0.0


def test_big_classify_and_regress_bodies_are_parsed_in_the_helper(server):
    """A 3.5 MB classify of 500,000 examples was parsed, and its tf.Examples written, in the
    server, holding the GIL for up to 359 ms at a time. The helper's CPU time shows where the
    work ran (the helper never touched a classify before); the small requests' worst wait
    meanwhile is printed for the record."""
    process, client, _, _ = server
    examples = 60_000
    items = ",".join(f'{{"x":{i % 10}.5}}' for i in range(examples))
    bodies = {"classify": f'{{"signature_name":"classify_x_to_y","examples":[{items}]}}',
              "regress": f'{{"signature_name":"regress_x_to_y","context":{{"s":"c"}},'
                         f'"examples":[{items}]}}'}
    stop, waits = threading.Event(), []

    def small_requests() -> None:
        mine = RestClient(client.port)
        while not stop.is_set():
            started = time.perf_counter()
            assert mine.predict("hpt", {"instances": [1.0]})[0] == 200
            waits.append(time.perf_counter() - started)
        mine.close()

    prober = threading.Thread(target=small_requests)
    prober.start()
    try:
        for verb, body in bodies.items():
            assert len(body) >= BIG
            before = _helper_cpu_seconds(process.popen.pid)
            status, answer = post(client, f"/v1/models/hpt:{verb}", body.encode())
            assert status == 200, answer
            first = answer["results"][:3]
            assert first == ([[["", 2.25]], [["", 2.75]], [["", 3.25]]] if verb == "classify"
                             else [2.25, 2.75, 3.25]), first
            assert len(answer["results"]) == examples
            spent = _helper_cpu_seconds(process.popen.pid) - before
            assert spent >= 0.05, f"{verb}: the helper spent {spent:.3f} s on a {len(body)} B body"
    finally:
        stop.set()
        prober.join(timeout=30)
    print(f"small predicts during two {len(bodies['classify']) // 1024} KiB bodies: "
          f"{len(waits)}, worst {max(waits) * 1000:.0f} ms")


# -- item 18: one version from the parse to the run ---------------------------------------------


def test_a_swap_that_changes_the_input_dtype_fails_no_request(server):
    """REST resolved "latest" for the body's parse, then again for the run: a swap between the
    two from a float32 input to an int64 one failed the request with 400 ("Expects arg[0] to
    be int64 but float is provided"). TF Serving's handler resolves twice too (``GetInfoMap``,
    then ``Predict``); we hold one version for both, and every request is answered by it."""
    process, client, _, bases = server
    base, last = bases["swap"], 9
    staged = []
    for version in range(2, last + 1):  # built first, so that swaps come fast
        path = base / f".staging-{version}"
        plus_version(path, tf.int64 if version % 2 else tf.float32, version)
        staged.append((path, base / str(version)))
    stop, answers = threading.Event(), []

    def hammer(count: int) -> None:
        mine = RestClient(client.port)
        body = json.dumps({"inputs": list(range(count))}).encode()
        while not stop.is_set():
            status, headers, answer = mine.call("POST", "/v1/models/swap:predict", body)
            answers.append((status, headers.get("x-model-version"), answer))
        mine.close()

    threads = [threading.Thread(target=hammer, args=(count,))
               for count in (45_000, 45_000, 20_000)]  # in the helper, and here
    for thread in threads:
        thread.start()
    try:
        for path, final in staged:
            path.rename(final)
            loaded(process, base, int(final.name))
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    failed = [(status, answer) for status, _, answer in answers if status != 200]
    assert not failed, (len(failed), len(answers), failed[:3])
    versions = {int(version) for _, version, _ in answers}
    assert {version % 2 for version in versions} == {0, 1}, versions  # both dtypes answered
    for _, version, answer in answers:
        assert answer == {"outputs": 1.0 + int(version)}
