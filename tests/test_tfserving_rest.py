"""TF Serving's own REST test cases, each sent over real HTTP to a real ``python -m
consumer.model_server`` process, and each answered as that test asserts TF Serving answers.

The cases (tests/data/tfserving_rest_cases.json) come from TF Serving's ``json_tensor_test.cc``,
``http_rest_api_handler_test.cc``, ``http_rest_api_util_test.cc``,
``tensorflow_model_server_test.py`` and ``api_rest.md``; each test id is its source test's name
and the request's index in it. Cases that test TF Serving's JSON codec alone (a request body to
tensors, tensors to a body) run through small models that echo their inputs or return fixed
outputs, so the codec is checked through the whole server. Where we answer differently on
purpose, ``DIFFERENCES`` says why, and the test asserts our answer instead.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness.processes import free_ports
from harness.rest_client import RestClient
from tests import tfs_models
from tests.helpers import warm

DATA = json.loads((Path(__file__).parent / "data" / "tfserving_rest_cases.json").read_text())
CASES = DATA["cases"]

# Deliberate differences: case id -> (our status, a substring of our error, why).
DIFFERENCES = {
    "JsontensorTest.FloatTensorThatExceedsMaxReturnsInf#0": (
        400, "out of range for type: float",
        "a float32 input past its range is refused, not made infinite (the issue asked it)"),
    "JsontensorTest.FloatTensorThatExceedsMaxReturnsInf#1": (
        400, "out of range for type: float", "as above, for the negative maximum"),
}


def case_id(case: dict) -> str:
    return f"{case['test']}#{case['case']}"


def cases(*kinds: str) -> list:
    return [pytest.param(c, id=case_id(c)) for c in CASES if c["kind"] in kinds]


def _key(inputs: dict) -> str:
    return json.dumps(sorted((k, v["dtype"]) for k, v in inputs.items()))


def _render_tensors(case: dict) -> dict[str, np.ndarray]:
    tensors = {}
    for name, spec in (case.get("tensors") or {}).items():
        values = [float(v) if v in ("inf", "-inf", "nan") else v for v in spec["values"]]
        if spec["dtype"] == "DT_STRING":
            values = [v.encode() for v in values]
        dtype = tfs_models.DTYPES[spec["dtype"]].as_numpy_dtype
        array = np.array(values, dtype=object if spec["dtype"] == "DT_STRING" else dtype)
        tensors[name] = array.reshape(spec["shape"] if spec["shape"] is not None else [])
    return tensors


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server with every model the cases need, from a model config file."""
    root = tmp_path_factory.mktemp("tfs")
    models: dict[str, tuple[Path, str]] = {}  # name -> (base path, extra config)

    def add(name: str, build, versions=(123,), extra: str = "") -> None:
        for version in versions:
            build(root / name / f"{version:08d}")
        models[name] = (root / name, extra)

    add("saved_model_half_plus_two_2_versions",
        lambda p: tfs_models.half_plus_two(p, with_x2_classifier=True), (123, 124),
        'model_version_policy { specific { versions: 123 } } '
        'version_labels { key: "Version_Label" value: 123 }')
    add("default", tfs_models.half_plus_two)
    add("saved_model_half_plus_three", tfs_models.half_plus_three)
    add("examples", tfs_models.example_echo)
    echoes = {}
    for case in CASES:
        if case["kind"] == "parse_predict" and _key(case["signature_inputs"]) not in echoes:
            name = f"echo_{len(echoes)}"
            echoes[_key(case["signature_inputs"])] = name
            inputs = {k: v["dtype"] for k, v in case["signature_inputs"].items()}
            # the one signature name a case asks for, beside serving_default
            add(name, lambda p, inputs=inputs: tfs_models.echo(p, inputs, ("predict_images",)))
        if case["kind"] == "render_predict" and case.get("tensors"):
            add(f"fixed_{case_id(case)}".replace(".", "_").replace("#", "_"),
                lambda p, t=_render_tensors(case): tfs_models.constant(p, t))
    add("results_classify", lambda p: tfs_models.fixed_results(
        p, [["car", "bike", "bus"]] * 2, [[0.2, 0.7, 0.1], [0.7, 0.1, 0.2]], [0.2, 0.9]))
    add("results_regress", lambda p: tfs_models.fixed_results(
        p, [["a"]] * 3, [[0.0]] * 3, [0.2, 0.9, 1.0]))
    add("results_non_finite", lambda p: tfs_models.fixed_results(
        p, [["a"]] * 5, [[0.0]] * 5, [0.2, math.inf, 1.0, -math.inf, math.nan]))
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" {extra} }}\n'
        for name, (path, extra) in models.items()) + "}\n")
    rest, grpc = free_ports(2)
    process = warm("consumer.model_server", f"--model_config_file={config}",
                      f"--rest_api_port={rest}", f"--port={grpc}", "--work_dir", root / "work")
    for _ in models:
        process.wait_for(lambda e: e["event"] in ("model_loaded", "load_failed"), timeout=120)
    assert not process.named("load_failed"), process.named("load_failed")
    client = RestClient(rest)
    yield client, echoes
    client.close()
    assert process.terminate() == 0, process.stderr


def _call(client: RestClient, method: str, path: str, body) -> tuple[int, object]:
    data = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
    status, _, answer = client.call(method, path, data)
    return status, answer


def _body(case: dict) -> str:
    if case.get("body") is not None:
        return case["body"]
    recipe = case["body_recipe"]
    assert "500000" in recipe, recipe
    deep = "[" * 500000 + "]" * 500000
    if "signature_name" in recipe:
        return '{"signature_name":' + deep + "}"
    return '{"instances":[1], "nested":' + deep + "}"


def _assert_error(status: int, answer, expect: dict, case: dict) -> None:
    difference = DIFFERENCES.get(case_id(case))
    if difference is not None:
        assert status == difference[0] and difference[1] in answer["error"], answer
        return
    want = 501 if expect.get("code") == "Unimplemented" else expect.get("status", 400)
    assert status == want, answer
    for text in expect.get("substrings") or []:
        assert text in answer["error"], answer


# -- json_tensor_test.cc: request bodies to tensors ----------------------------------------------


def _tensors_from_answer(answer, row: bool, names: list[str]) -> dict[str, np.ndarray]:
    """The echo model's answer back as tensors (its outputs are its inputs)."""
    if not row:
        values = answer["outputs"]
        return {names[0]: values} if len(names) == 1 else values
    rows = answer["predictions"]
    if len(names) == 1:
        return {names[0]: rows}
    return {name: [row[name] for row in rows] for name in names}


def _same(got, want: dict) -> bool:
    got = np.array(got, dtype=object)
    if list(got.shape) != want["shape"]:
        return False
    for have, expected in zip(got.reshape(-1).tolist(), want["values"]):
        if want["dtype"] in ("DT_FLOAT", "DT_DOUBLE"):
            expected = float(expected)
            dtype = np.float32 if want["dtype"] == "DT_FLOAT" else np.float64
            if not (math.isnan(expected) and math.isnan(have)) and \
                    dtype(have) != dtype(expected):
                return False
        elif have != expected:
            return False
    return True


@pytest.mark.parametrize("case", cases("parse_predict"))
def test_json_tensor_request(server, case):
    client, echoes = server
    model = echoes[_key(case["signature_inputs"])]
    expect = case["expect"]
    if "as_written" in expect:
        # a doc example with // comments: as written, TF Serving refuses it too; without them
        # it is what the doc says
        status, answer = _call(client, "POST", f"/v1/models/{model}:predict", case["body"])
        assert status == 400 and "JSON Parse error" in answer["error"]
        status, answer = _call(client, "POST", f"/v1/models/{model}:predict",
                               case["body_without_comments"])
    else:
        status, answer = _call(client, "POST", f"/v1/models/{model}:predict", _body(case))
    if not expect.get("ok") or case_id(case) in DIFFERENCES:
        _assert_error(status, answer, expect, case)
        return
    assert status == 200, answer
    names = sorted(case["signature_inputs"])
    got = _tensors_from_answer(answer, expect["format"] == "row", names)
    for name, want in expect["tensors"].items():
        assert _same(got[name], want), (name, got[name], want)


# -- json_tensor_test.cc: tensors to answers -----------------------------------------------------


def _numbers_as_text(text: str):
    """JSON with every number kept as its text, as TF Serving's CompareJsonAllValuesAsStrings
    compares them: 9e+06 is not 9000000.0 there."""
    keep = lambda token: ("number", token)  # noqa: E731
    return json.loads(text, parse_float=keep, parse_int=keep, parse_constant=keep)


def _compare_json(text: str, expected: str, as_text: bool) -> None:
    if as_text:
        assert _numbers_as_text(text) == _numbers_as_text(expected), text
    else:
        assert json.loads(text) == json.loads(expected), text


@pytest.mark.parametrize("case", cases("render_predict"))
def test_json_tensor_answer(server, case):
    client, _ = server
    expect, row = case["expect"], case["format"] == "row"
    if not case.get("tensors"):
        # an empty output map: a SavedModel signature cannot have none, so only the codec is
        # asked (the one case not sent over the wire)
        from consumer.serving import json_render
        from consumer.serving.errors import ServingError

        with pytest.raises(ServingError, match="Cannot convert empty tensor map to JSON"):
            json_render.render_predict({}, row)
        return
    model = f"fixed_{case_id(case)}".replace(".", "_").replace("#", "_")
    request = json.dumps({"instances": [0.0]} if row else {"inputs": [0.0]}).encode()
    status, _, raw = client.call("POST", f"/v1/models/{model}:predict", request, raw=True)
    if not expect["ok"]:
        _assert_error(status, json.loads(raw), expect, case)
        return
    assert status == 200, raw
    _compare_json(raw.decode(), expect["json"], case.get("compare") == "numbers_as_strings")


# -- json_tensor_test.cc: classify and regress -------------------------------------------------


def _expected_examples(case: dict) -> list:
    from google.protobuf import text_format
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import classification_pb2

    request = text_format.Parse(case["expect"]["expected_proto_text"],
                                classification_pb2.ClassificationRequest())
    if request.input.HasField("example_list"):
        return list(request.input.example_list.examples)
    context = request.input.example_list_with_context.context
    merged = []
    for example in request.input.example_list_with_context.examples:
        whole = example_pb2.Example()
        whole.CopyFrom(context)
        whole.MergeFrom(example)  # an example's feature wins over the context's
        merged.append(whole)
    return merged


@pytest.mark.parametrize("case", cases("parse_classify", "parse_regress"))
def test_json_examples_request(server, case):
    """The echo model shows each example it was given: its label is the serialized example."""
    from tensorflow.core.example import example_pb2

    client, _ = server
    expect = case["expect"]
    status, answer = _call(client, "POST", "/v1/models/examples:classify", case["body"])
    if not expect.get("ok"):
        _assert_error(status, answer, expect, case)
        if case["kind"] == "parse_regress":  # the regress path parses alike, and says alike
            status, answer = _call(client, "POST", "/v1/models/examples:regress", case["body"])
            _assert_error(status, answer, expect, case)
        return
    if "signature_name" in json.loads(case["body"]):  # the echo answers any name: rename it
        body = json.loads(case["body"])
        body.pop("signature_name")
        status, answer = _call(client, "POST", "/v1/models/examples:classify", json.dumps(body))
    assert status == 200, answer
    given = [example_pb2.Example.FromString(base64.urlsafe_b64decode(row[0][0]))
             for row in answer["results"]]
    if "expected_proto_text" in expect:
        assert given == _expected_examples(case)
    if case["kind"] == "parse_regress":
        body = json.loads(case["body"])
        body["signature_name"] = "regress"
        status, answer = _call(client, "POST", "/v1/models/examples:regress", json.dumps(body))
        assert status == 200 and len(answer["results"]) == len(given), answer


@pytest.mark.parametrize("case", cases("render_classify", "render_regress"))
def test_json_examples_answer(server, case):
    client, _ = server
    expect = case["expect"]
    if not case["result"]:  # an empty result: only the codec can be given one
        from consumer.serving import examples
        from consumer.serving.errors import ServingError

        render = (lambda: examples.render_classification([], [])) \
            if case["kind"] == "render_classify" else (lambda: examples.render_regression([]))
        with pytest.raises(ServingError, match=expect["substrings"][0]):
            render()
        return
    rows = len(case["result"])
    model = {"render_classify": "results_classify"}.get(case["kind"]) or (
        "results_non_finite" if rows == 5 else "results_regress")
    verb = "classify" if case["kind"] == "render_classify" else "regress"
    body = {"examples": [{"x": 1.0}] * rows}
    if verb == "regress":
        body["signature_name"] = "regress"
    status, _, raw = client.call("POST", f"/v1/models/{model}:{verb}", json.dumps(body).encode(),
                                 raw=True)
    assert status == 200, raw
    _compare_json(raw.decode(), expect["json"], case.get("compare") == "numbers_as_strings")


@pytest.mark.parametrize("case", cases("render_error"))
def test_json_error_answer(server, case):
    """The error body: ``{"error": message}``, the message alone, quotes escaped."""
    from consumer.serving import json_render

    client, _ = server
    expect = case["expect"]
    if not expect["json"]:  # an OK status writes no error body: a 200 carries none
        status, answer = _call(client, "GET", "/v1/models/default", None)
        assert status == 200 and "error" not in answer
        return
    message = json.loads(expect["json"])["error"]
    assert json.loads(json_render.render_error(message)) == json.loads(expect["json"])
    # over the wire, a message with the same quotes: a signature name with them
    name = message.split(": ", 1)[1].strip('"\'')
    status, answer = _call(client, "POST", "/v1/models/default:predict",
                           json.dumps({"signature_name": name, "instances": [1.0]}))
    assert status == 400
    assert answer["error"] == f'Serving signature name: "{name}" not found in signature def'


# -- the handler, the model server and api_rest.md: whole exchanges ----------------------------


@pytest.mark.parametrize("case", cases("http"))
def test_http_exchange(server, case):
    client, _ = server
    expect = case["expect"]
    if expect.get("asserted") is False:  # the profiler test sends a predict and checks nothing
        status, _ = _call(client, case["method"], case["path"], case["body"])
        assert status == 200
        return
    status, headers, raw = client.call(case["method"], case["path"],
                                       (case.get("body") or "").encode() or None, raw=True)
    assert status == expect["status"], raw
    if case["path"].startswith("/monitoring"):
        assert all(text in raw.decode() for text in expect["substrings"])
        return
    answer = json.loads(raw)
    if status != 200:
        _assert_error(status, answer, expect, case)
    elif "json" in expect:
        _compare_json(raw.decode(), expect["json"], False)
    for name, value in (expect.get("headers") or {}).items():
        assert headers[name.lower()] == value


def _url_answer(case: dict) -> tuple[int, str]:
    """What the server must say to a path, given how TF Serving's own parser reads it: the
    model name, version or label each answer names proves the parse."""
    expect, method, path = case["expect"], case["method"], case["path"]
    if not expect["parse_successful"]:
        return 400, f"Malformed request: {method} {path}"
    if not expect.get("ok", True):
        return 400, expect["substrings"][0]
    name, label = expect["model_name"], expect.get("label")
    if method == "GET" and expect.get("subresource") != "metadata":  # status ignores labels
        if "version" in expect:
            return 404, f"Could not find version {expect['version']} of model {name}"
        return 404, f"Could not find any versions of model {name}"
    if label is not None:
        return 400, f"Unrecognized servable version label: {label}"
    if "version" in expect:
        return 404, f"Servable not found for request: Specific({name}, {expect['version']})"
    return 404, f"Servable not found for request: Latest({name})"


@pytest.mark.parametrize("case", cases("parse_url"))
def test_url(server, case):
    client, _ = server
    case = dict(case, method="GET" if "ForGet" in case["test"] else "POST")
    body = '{"instances": [1.0]}' if case["method"] == "POST" else None
    status, answer = _call(client, case["method"], case["path"], body)
    want_status, message = _url_answer(case)
    assert status == want_status and message in answer["error"], answer


@pytest.mark.parametrize("case", cases("path_regex"))
def test_rest_paths(server, case):
    """Only ``/v1/...`` reaches the REST handler; anything else is not found."""
    client, _ = server
    status, answer = _call(client, "GET", case["path"], None)
    if case["expect"]["matches"]:
        assert status == 400 and answer["error"] == "Missing model name in request."
    else:
        assert status == 404 and "Not found" in answer["error"]
