"""gRPC: TF Serving's PredictionService and ModelService, called with the real stubs of the
``tensorflow-serving-api`` package against a real server process, answer as the REST API does,
with TF Serving's status codes for each mistake."""

from __future__ import annotations

import shutil
import threading

import grpc
import numpy as np
import pytest

from harness.processes import free_ports
from harness.rest_client import RestClient
from shared import layout
from tests import tfs_models
from tests.helpers import warm
from tests.test_model_server import config_file, loaded, swap_under_load

from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,  # noqa: E402
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from shared.tfcompat import tf  # noqa: E402


class Stubs:
    def __init__(self, port: int, max_message: int = 2**31 - 1) -> None:
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", max_message),
                                          ("grpc.max_receive_message_length", max_message)])
        self.predict = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def examples_input(message, values: list[float]) -> None:
    for value in values:
        example = message.input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(value)


@pytest.fixture(scope="module")
def servers(mlp_export, tmp_path_factory):
    """half_plus_two (TF Serving's test model) and our mlp, both in TF Serving's layout."""
    root = tmp_path_factory.mktemp("grpc")
    bases = {"half_plus_two": root / "half_plus_two", "mlp": root / "mlp"}
    tfs_models.half_plus_two(bases["half_plus_two"] / "123", with_x2_classifier=True)
    newest = layout.latest_savedmodel(mlp_export.root)
    shutil.copytree(newest.path, bases["mlp"] / str(newest.step))
    rest, port = free_ports(2)
    server = warm("consumer.model_server", config_file(root / "models.config", bases),
                     f"--rest_api_port={rest}", f"--port={port}", "--work_dir", root / "work",
                     "--grpc_channel_arguments=grpc.max_receive_message_length=1048576")
    for name, base in bases.items():
        server.wait_seen(lambda e, b=base: e["event"] == "model_loaded"
                         and e["path"].startswith(str(b)))
    stubs, client = Stubs(port), RestClient(rest)
    yield stubs, client, newest.step
    stubs.close()
    client.close()
    assert server.terminate() == 0, server.stderr
    assert "Traceback" not in server.stderr and not server.named("request_failed")


def test_each_call_answers_as_rest_does_on_half_plus_two(servers):
    stubs, client, _ = servers
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[2.0], [3.0]], tf.float32))
    response = stubs.predict.Predict(request, timeout=10)
    assert list(response.outputs["y"].float_val) == [3.0, 3.5]  # typed fields, as TF Serving's
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("half_plus_two", 123, "serving_default")
    rest = client.predict("half_plus_two", {"instances": [[2.0], [3.0]]})[2]
    assert rest["predictions"] == [[3.0], [3.5]]

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = "half_plus_two", \
        "classify_x_to_y"
    examples_input(classify, [2.0])
    result = stubs.predict.Classify(classify, timeout=10)
    assert [(c.label, c.score) for c in result.result.classifications[0].classes] == [("", 3.0)]
    assert result.model_spec.signature_name == "classify_x_to_y"
    status, _, rest = client.call("POST", "/v1/models/half_plus_two:classify",
                                  {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert rest == {"results": [[["", 3.0]]]}

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "half_plus_two", "regress_x_to_y"
    examples_input(regress, [2.0, 4.0])
    result = stubs.predict.Regress(regress, timeout=10)
    assert [r.value for r in result.result.regressions] == [3.0, 4.0]
    rest = client.call("POST", "/v1/models/half_plus_two:regress",
                       {"signature_name": "regress_x_to_y",
                        "examples": [{"x": 2.0}, {"x": 4.0}]})[2]
    assert rest == {"results": [3.0, 4.0]}

    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                              ("regress_x_to_y2", "tensorflow/serving/regress")):
        task = multi.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = "half_plus_two", signature
    examples_input(multi, [2.0])
    results = stubs.predict.MultiInference(multi, timeout=10).results
    assert results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert results[1].regression_result.regressions[0].value == 4.0
    assert [r.model_spec.signature_name for r in results] == ["classify_x_to_y", "regress_x_to_y2"]

    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "half_plus_two"
    answer = stubs.predict.GetModelMetadata(metadata, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(signatures)
    rest = client.call("GET", "/v1/models/half_plus_two/metadata")[2]
    assert set(signatures.signature_def) == set(rest["metadata"]["signature_def"]["signature_def"])
    assert signatures.signature_def["serving_default"].inputs["x"].name == "x:0"
    assert (answer.model_spec.version.value, answer.model_spec.signature_name) == (123, "")

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "half_plus_two"
    statuses = stubs.models.GetModelStatus(status_request, timeout=10).model_version_status
    assert [(s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
             s.status.error_code) for s in statuses] == [(123, "AVAILABLE", 0)]


def test_predict_on_the_mlp_matches_rest_and_filters_outputs(servers):
    stubs, client, step = servers
    rows = np.random.default_rng(3).random((2, 28)).astype(np.float32)
    request = predict_pb2.PredictRequest(output_filter=["probabilities"])
    request.model_spec.name = "mlp"
    request.model_spec.version.value = step
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows))
    response = stubs.predict.Predict(request, timeout=10)
    assert list(response.outputs) == ["probabilities"]
    grpc_probabilities = tf.make_ndarray(response.outputs["probabilities"])
    rest = client.predict("mlp", {"inputs": {"features": rows.tolist()}})[2]["outputs"]
    assert np.allclose(grpc_probabilities, rest["probabilities"], atol=1e-6)
    request.ClearField("output_filter")
    response = stubs.predict.Predict(request, timeout=10)
    assert [c.decode() for c in tf.make_ndarray(response.outputs["classes"])] == rest["classes"]


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failure:
        call(request, timeout=10)
    return failure.value.code(), failure.value.details()


def _predict(model="half_plus_two", version=None, label=None, signature="", **inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(value)
    return request


X = tf.make_tensor_proto([[1.0]], tf.float32)


@pytest.mark.parametrize("request_, code, text", [
    (predict_pb2.PredictRequest(), "INVALID_ARGUMENT", "Missing ModelSpec"),
    (_predict("nope", x=X), "NOT_FOUND", "Servable not found for request: Latest(nope)"),
    (_predict(version=7, x=X), "NOT_FOUND", "Servable not found for request: "
                                            "Specific(half_plus_two, 7)"),
    (_predict(label="stable", x=X), "INVALID_ARGUMENT", "Unrecognized servable version label: "
                                                         "stable"),
    (_predict(signature="nope", x=X), "FAILED_PRECONDITION", 'Serving signature key "nope" not '
                                                             'found.'),
    (_predict(y=X), "INVALID_ARGUMENT", "input size does not match signature: 1!=1 len({y}) != "
                                        "len({x}). Sent extra: {y}. Missing but required: {x}."),
    (_predict(x=tf.make_tensor_proto([[1]], tf.int32)), "INVALID_ARGUMENT",
     "Expects arg[0] to be float but int32 is provided"),
    (_predict("mlp", features=tf.make_tensor_proto(np.zeros((1, 27), np.float32))),
     "INVALID_ARGUMENT", "Matrix size-incompatible"),
    (_predict(x=tf.make_tensor_proto(np.zeros((300000, 1), np.float32))), "RESOURCE_EXHAUSTED",
     "Received message larger than max"),
])
def test_each_mistake_gets_tf_servings_status_code(servers, request_, code, text):
    stubs, _, _ = servers
    got, details = _code(stubs.predict.Predict, request_)
    assert got == getattr(grpc.StatusCode, code) and text in details, (got, details)
    assert stubs.predict.Predict(_predict(x=X), timeout=10).outputs["y"].float_val == [2.5]


def test_classify_mistakes_and_reload_without_a_config(servers):
    stubs, _, _ = servers
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = "half_plus_two", "nope"
    examples_input(classify, [1.0])
    assert _code(stubs.predict.Classify, classify) == (
        grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: nope")
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.Clear()
    assert _code(stubs.predict.Classify, classify) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                       "Input is empty.")
    # classification_service.cc: no model_spec at all; multi_inference_helper.cc looks up the
    # first task's servable before multi_inference.cc checks each task
    assert _code(stubs.predict.Classify, classification_pb2.ClassificationRequest()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add(method_name="tensorflow/serving/classify")
    examples_input(multi, [1.0])
    assert _code(stubs.predict.MultiInference, multi) == (
        grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    multi.tasks[0].model_spec.name = "half_plus_two"
    multi.tasks[0].model_spec.signature_name = "classify_x_to_y"
    multi.tasks.add(method_name="tensorflow/serving/regress")
    assert _code(stubs.predict.MultiInference, multi) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Found ModelSpec with an empty model name.")
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["other"])
    metadata.model_spec.name = "half_plus_two"
    assert _code(stubs.predict.GetModelMetadata, metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Metadata field other is not supported")
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "half_plus_two"
    status_request.model_spec.version.value = 9
    assert _code(stubs.models.GetModelStatus, status_request) == (
        grpc.StatusCode.NOT_FOUND, "Could not find version 9 of model half_plus_two")


def test_before_any_version_is_ready_calls_are_unavailable(tmp_path):
    """TF Serving opens no port before its first version is ready; we do, and say UNAVAILABLE
    (retryable) until then."""
    base = tmp_path / "empty"
    base.mkdir()
    rest, port = free_ports(2)
    server = warm("consumer.model_server", f"--model_base_path={base}", "--model_name=m",
                     f"--rest_api_port={rest}", f"--port={port}", "--work_dir", tmp_path / "w")
    server.wait_for(lambda e: e["event"] == "serving")
    stubs = Stubs(port)
    code, details = _code(stubs.predict.Predict, _predict("m", x=X))
    assert code == grpc.StatusCode.UNAVAILABLE and "no version of model m is ready" in details
    reload = model_management_pb2.ReloadConfigRequest()  # no model_config_list in it
    assert _code(stubs.models.HandleReloadConfigRequest, reload) == (
        grpc.StatusCode.INVALID_ARGUMENT, "ServerModelConfig type not supported by "
        "HandleReloadConfigRequest. Only ModelConfigList is currently supported")
    stubs.close()
    assert server.terminate() == 0, server.stderr


def test_swaps_under_grpc_and_rest_load_fail_no_call(tmp_path):
    """30 hot swaps while two gRPC and two REST clients call without pause: every answer comes
    from the version it names, and no client sees its version go back."""
    base = tmp_path / "hp2"
    base.mkdir()
    versions = tfs_models.HalfPlusTwo()
    tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
    rest, port = free_ports(2)
    server = warm("consumer.model_server", f"--model_base_path={base}", "--model_name=hp2",
                     f"--rest_api_port={rest}", f"--port={port}", "--work_dir", tmp_path / "w")
    loaded(server, base, 1)
    stop, seen = threading.Event(), [[] for _ in range(4)]

    def grpc_client(answers: list) -> None:
        stubs = Stubs(port)
        while not stop.is_set():
            try:
                response = stubs.predict.Predict(_predict("hp2", x=X), timeout=10)
                answers.append((response.model_spec.version.value,
                                response.outputs["y"].float_val[0]))
            except grpc.RpcError as err:
                answers.append((None, err.code()))
        stubs.close()

    def rest_client(answers: list) -> None:
        client = RestClient(rest)
        while not stop.is_set():
            status, headers, body = client.predict("hp2", {"instances": [[1.0]]})
            answers.append((int(headers["x-model-version"]), body["predictions"][0][0])
                           if status == 200 else (None, body))
        client.close()

    last = 31
    swap_under_load(server, base, versions, range(2, last + 1),
                    [threading.Thread(target=grpc_client if i < 2 else rest_client,
                                      args=(seen[i],)) for i in range(4)],
                    stop, settle=0.2)  # every client meets the last version too
    assert server.terminate() == 0, server.stderr
    for answers in seen:
        assert answers and all(version is not None for version, _ in answers), answers[:3]
        assert all(value == 0.5 + version for version, value in answers)  # its own weights
        steps = [version for version, _ in answers]
        assert steps == sorted(steps) and steps[-1] == last
    loads = server.named("model_loaded")
    assert len(loads) == last and {e["load"] for e in loads[1:]} == {"warm"}


def test_metrics_count_each_protocol(servers):
    stubs, client, _ = servers
    stubs.predict.Predict(_predict(x=X), timeout=10)
    client.predict("half_plus_two", {"instances": [[1.0]]})
    text = client.call("GET", "/monitoring/prometheus/metrics")[2].decode()
    for protocol in ("grpc", "rest"):
        assert (f'handoff_requests_total{{code="{"OK" if protocol == "grpc" else 200}",'
                f'endpoint="predict",model="half_plus_two",protocol="{protocol}",'
                f'version="123"}}') in text
