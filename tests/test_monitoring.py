"""``--monitoring_config_file`` and TF Serving's Prometheus series, through a real server, real
REST and gRPC clients, and the scrape parsed by ``prometheus_client``'s own parser: the names,
label names and bucket bounds a Grafana dashboard built on TF Serving queries.

The oracle, TF Serving's source (tensorflow/serving at 9d981c5):
- config/monitoring_config.proto: ``MonitoringConfig { PrometheusConfig prometheus_config = 1 }``,
  ``PrometheusConfig { bool enable = 1; string path = 2 }``;
- model_servers/http_server.cc 224-239: the exporter is registered only if ``enable``, at
  ``path`` or ``/monitoring/prometheus/metrics`` (util/prometheus_exporter.cc,
  ``kPrometheusPath``); server.cc 441-445: the file is parsed only when the flag is given;
- util/prometheus_exporter.cc, ``GetPrometheusMetricName``: ``/`` becomes ``:``;
- servables/tensorflow/util.cc 54-89: request_example_counts {model} (Exponential(1, 2, 15)),
  request_example_count_total {model}, request_count {model_name, status}, runtime_latency
  {model_name, API, runtime} and request_latency {model_name, API, entrypoint}, both
  Exponential(10, 1.8, 33) in microseconds; http_server.cc 195-201 (REST: API is the verb,
  entrypoint "REST"), prediction_service_impl.cc 53-59 (gRPC: "Predict", "GRPC");
- servables/tensorflow/saved_model_warmup_util.cc 51-63: model_warmup_latency and
  model_warmup_records_read {model_path, status}; TF's cc/saved_model/loader.cc:
  load_attempt_count {model_path, status}, load_latency {model_path}, load_latency_by_stage
  {model_path, stage}.
"""

from __future__ import annotations

import math

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.serving.metrics import UNKNOWN_MODEL, ServingMetrics
from harness.processes import free_ports
from harness.rest_client import RestClient
from tests import tfs_models
from tests.helpers import run_warm, warm
from tests.test_model_server import loaded

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

# TF Serving's scraped names, their kinds and label names (util.cc 54-89 and the files above)
TF_SERIES = {
    ":tensorflow:serving:request_count": ("counter", {"model_name", "status"}),
    ":tensorflow:serving:request_latency": ("histogram", {"model_name", "API", "entrypoint"}),
    ":tensorflow:serving:runtime_latency": ("histogram", {"model_name", "API", "runtime"}),
    ":tensorflow:serving:request_example_counts": ("histogram", {"model"}),
    ":tensorflow:serving:request_example_count_total": ("counter", {"model"}),
    ":tensorflow:serving:model_warmup_latency": ("histogram", {"model_path", "status"}),
    ":tensorflow:serving:model_warmup_records_read": ("counter", {"model_path", "status"}),
    ":tensorflow:cc:saved_model:load_attempt_count": ("counter", {"model_path", "status"}),
    ":tensorflow:cc:saved_model:load_latency": ("counter", {"model_path"}),
    ":tensorflow:cc:saved_model:load_latency_by_stage": ("histogram", {"model_path", "stage"}),
}
# "Scale of 10, power of 1.8 with bucket count 33 (~20 minutes)" (util.cc 78, 89), then DBL_MAX
# written as +Inf (prometheus_exporter.cc, SerializeHistogram)
TF_LATENCY_BOUNDS = [10 * 1.8 ** i for i in range(33)] + [math.inf]


def _types(text: str) -> dict[str, str]:
    """Each family's ``# TYPE`` as written (the parser renames counters; a dashboard does not)."""
    return {line.split()[2]: line.split()[3] for line in text.splitlines()
            if line.startswith("# TYPE ")}


def _scraped_names(text: str) -> set[str]:
    """The names on the sample lines, as written: what a dashboard's query names."""
    return {line.split("{")[0].split()[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def _samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _grpc_predict(port: int, model: str):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2)])))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            return stub.Predict(request, timeout=10)
        except grpc.RpcError as err:
            return err.code()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """half_plus_two at version 1, metrics at /metrics by a MonitoringConfig."""
    root = tmp_path_factory.mktemp("monitoring")
    base = root / "hp2"
    tfs_models.half_plus_two(base / "1")
    config = root / "monitoring.config"
    config.write_text('prometheus_config {\n  enable: true,\n  path: "/metrics"\n}\n')
    rest, port = free_ports(2)
    process = warm("consumer.model_server", f"--model_base_path={base}", "--model_name=hp2",
                   f"--rest_api_port={rest}", f"--port={port}", "--work_dir", root / "w",
                   f"--monitoring_config_file={config}")
    loaded(process, base, 1)
    client = RestClient(rest)
    yield client, port, base
    client.close()
    assert process.terminate() == 0, process.stderr
    assert "Traceback" not in process.stderr


def test_the_configured_path_serves_tf_servings_series_under_its_names(server):
    client, port, base = server
    assert client.predict("hp2", {"instances": [1.0, 2.0]})[0] == 200
    assert client.predict("hp2", {"instances": "not a list"})[0] == 400
    assert client.call("GET", "/v1/models/hp2")[0] == 200
    assert list(_grpc_predict(port, "hp2").outputs["y"].float_val) == [2.5, 3.0]
    assert client.call("GET", "/monitoring/prometheus/metrics")[0] == 404  # moved to /metrics
    status, headers, body = client.call("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    types = _types(text)
    assert {name: types.get(name) for name in TF_SERIES} == \
        {name: kind for name, (kind, _) in TF_SERIES.items()}
    samples = _samples(text)
    for sample in samples:  # every sample of a TF family carries exactly TF Serving's labels
        family = sample.name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        if sample.name in TF_SERIES or family in TF_SERIES:
            name = sample.name if sample.name in TF_SERIES else family
            assert set(sample.labels) - {"le"} == TF_SERIES[name][1], sample
    latency = ":tensorflow:serving:request_latency"
    assert {":tensorflow:serving:request_count", latency + "_bucket", latency + "_sum",
            latency + "_count"} <= _scraped_names(text)  # a counter's name without _total
    assert not [n for n in _scraped_names(text) if n.startswith(":") and n.endswith("_total")]
    count = ":tensorflow:serving:request_count_total"  # the parser's name for that counter
    assert _value(samples, count, model_name="hp2", status="OK") == 3  # GET, REST and gRPC
    assert _value(samples, count, model_name="hp2", status="INVALID_ARGUMENT") == 1
    counted = {(s.labels["API"], s.labels["entrypoint"]): s.value for s in samples
               if s.name == latency + "_count" and s.labels["model_name"] == "hp2"}
    assert counted == {("predict", "REST"): 1, ("", "REST"): 1, ("Predict", "GRPC"): 1}
    bounds = [float(s.labels["le"]) for s in samples if s.name == latency + "_bucket"
              and s.labels["API"] == "Predict"]
    assert bounds == pytest.approx(TF_LATENCY_BOUNDS, rel=1e-5)
    assert 10 < _value(samples, latency + "_sum", API="Predict") < 10e6  # microseconds
    # the model's own run (both predicts), and its load, are timed where TF Serving times them
    runtime = ":tensorflow:serving:runtime_latency_count"
    assert _value(samples, runtime, model_name="hp2", API="Predict", runtime="TF1") == 2
    loads = ":tensorflow:cc:saved_model:load_attempt_count_total"
    assert _value(samples, loads, model_path=str(base / "1"),
                  status="success") == 1
    # ours stay beside them
    assert _value(samples, "handoff_requests_total", model="hp2", protocol="grpc") == 1
    assert _value(samples, "handoff_live_version", model="hp2") == 1


def test_unknown_model_names_do_not_grow_the_scrape(server):
    """Issue 27 item 8: 2,000 requests for made-up names grew /metrics from 5 KB to 3.5 MB.
    They count under one model name; once it exists, more of them change figures only."""
    client, port, _ = server
    for i in range(5):
        assert client.predict(f"nope-{i}", {"instances": [1.0]})[0] == 404
        assert _grpc_predict(port, f"nope-{i}") == grpc.StatusCode.NOT_FOUND
        assert client.call("GET", f"/v1/models/nope-{i}/metadata")[0] == 404
    before = client.call("GET", "/metrics")[2]
    for i in range(5, 305):
        client.predict(f"nope-{i}", {"instances": [1.0]})
        client.call("GET", f"/v1/models/nope-{i}/metadata")
    for i in range(305, 355):
        _grpc_predict(port, f"nope-{i}")
    after = client.call("GET", "/metrics")[2]
    assert abs(len(after) - len(before)) < 200, (len(before), len(after))
    assert b"nope-" not in after
    samples = _samples(after.decode())
    assert _value(samples, ":tensorflow:serving:request_count_total", model_name=UNKNOWN_MODEL,
                  status="NOT_FOUND") == 15 + 600 + 50


def test_without_the_file_metrics_are_at_tf_servings_default_path_and_enable_false_serves_none(
        tmp_path):
    base = tmp_path / "hp2"
    base.mkdir()
    off = tmp_path / "off.config"
    off.write_text("prometheus_config { enable: false path: \"/metrics\" }\n")
    for args, served in (((), "/monitoring/prometheus/metrics"),
                         ((f"--monitoring_config_file={off}",), None)):
        rest, port = free_ports(2)
        process = warm("consumer.model_server", f"--model_base_path={base}",
                       f"--rest_api_port={rest}", f"--port={port}", "--work_dir", tmp_path / "w",
                       *args)
        process.wait_for(lambda e: e["event"] == "serving")
        client = RestClient(rest)
        try:
            for path in ("/monitoring/prometheus/metrics", "/metrics"):
                status, _, body = client.call("GET", path)
                assert status == (200 if path == served else 404), (args, path)
                if status == 200:
                    assert "# TYPE :tensorflow:serving:request_count counter" in body.decode()
        finally:
            client.close()
            assert process.terminate() == 0, process.stderr


@pytest.mark.parametrize("content, says", [
    (None, "No such file"),
    (b"prometheus_config { enable: yes please }", "not a MonitoringConfig text proto"),
    (b"prometheus { enable: true }", "not a MonitoringConfig text proto"),
    (b"\xff\xfe", "not a MonitoringConfig text proto"),
    (b'prometheus_config { enable: true path: "metrics" }', "is not a URL path"),
])
def test_a_monitoring_config_that_cannot_be_used_exits_2_with_one_line(tmp_path, content, says):
    """TF Serving fails its start on a file it cannot parse (server.cc 443,
    ``TF_RETURN_IF_ERROR(ParseProtoTextFile...)``); here: exit 2 and one line that says why."""
    config = tmp_path / "monitoring.config"
    if content is not None:
        config.write_bytes(content)
    rest, port = free_ports(2)
    result = run_warm("consumer.model_server", f"--model_base_path={tmp_path}",
                      f"--rest_api_port={rest}", f"--port={port}", "--work_dir", tmp_path / "w",
                      f"--monitoring_config_file={config}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("model_server: error: --monitoring_config_file") and says in \
        lines[0], lines[0]


def test_forget_model_removes_every_series_of_a_removed_model():
    """Issue 27 item 8: a model removed by a reload stayed as handoff_live_version{model="b"} 1.
    The reloader calls ``forget_model``; afterwards its name is unknown like any other."""
    metrics = ServingMetrics()
    for model in ("a", "b"):
        metrics.load_timed(model, 1, f"/m/{model}/1", 0.25, True)
        metrics.warmup_timed(model, 1, f"/m/{model}/1", 0.01, 2)
        metrics.went_live(model, 1, [1])
        metrics.refused(model, "promotion_refused")
        metrics.observe("rest", "predict", model, 200, 0.001, 1, "OK")
        metrics.observe("grpc", "predict", model, "OK", 0.001, 1)
        metrics.runtime(model, "Predict", 0.0005)
        metrics.examples(model, 3)
    metrics.forget_model("b")
    text = metrics.render().decode()
    left = {(s.name, tuple(sorted(s.labels.items()))) for s in _samples(text)}
    assert not [s for s in left if ("model", "b") in s[1] or ("model_name", "b") in s[1]
                or ("model_path", "/m/b/1") in s[1]]
    assert any(("model_name", "a") in s[1] for s in left)  # the other model's stay
    assert any(("model_path", "/m/a/1") in s[1] for s in left)
    metrics.observe("rest", "predict", "b", 404, 0.001, None, "NOT_FOUND")
    assert _value(_samples(metrics.render().decode()), ":tensorflow:serving:request_count_total",
                  model_name=UNKNOWN_MODEL) == 1
