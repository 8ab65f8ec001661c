"""Prometheus metrics of the model server: TF Serving's own series beside ours (``handoff_*``).

Served on the REST port at the path ``--monitoring_config_file`` names (``consumer.serving.
monitoring``; TF Serving's ``/monitoring/prometheus/metrics`` without it).

TF Serving's series, under its names, labels and buckets (its dashboards and alerts work
unchanged; written by ``consumer.serving.monitoring`` as its exporter writes them):

- ``:tensorflow:serving:request_count{model_name,status}``: every REST request, and gRPC
  Predict, Classify and Regress, by canonical code (servables/tensorflow/util.cc 66-68;
  http_server.cc 195-201, prediction_service_impl.cc 53-59).
- ``:tensorflow:serving:request_latency{model_name,API,entrypoint}``: microseconds, answered
  requests only; API is the REST verb (``predict``, ``classify``, ``regress``, "" for a GET) with
  entrypoint ``REST``, or the gRPC method (``Predict``...) with ``GRPC`` (util.cc 80-89).
- ``:tensorflow:serving:runtime_latency{model_name,API,runtime}``: microseconds of the model's
  own run (util.cc 70-78; runtime ``TF1``, TF Serving's label for a session run).
- ``:tensorflow:serving:request_example_counts{model}`` and
  ``:tensorflow:serving:request_example_count_total{model}``: tf.Examples per MultiInference
  request, and in all (util.cc 54-63; multi_inference.cc 98).
- ``:tensorflow:serving:model_warmup_latency{model_path,status}`` and
  ``:tensorflow:serving:model_warmup_records_read{model_path,status}`` (saved_model_warmup_util.cc
  51-63), ``:tensorflow:cc:saved_model:load_attempt_count{model_path,status}``,
  ``:tensorflow:cc:saved_model:load_latency{model_path}`` and
  ``:tensorflow:cc:saved_model:load_latency_by_stage{model_path,stage}`` (TF's
  cc/saved_model/loader.cc): a version's load and warm-up, by its directory.
  Latency histograms have TF's ``Buckets::Exponential(10, 1.8, 33)`` bounds (10 us to ~20 min).

Ours:

- ``handoff_requests_total{protocol,endpoint,model,version,code}`` and
  ``handoff_request_latency_seconds{protocol,endpoint,model,version}``: every request of both
  protocols, by the version that answered (TF Serving has no per-version figures:
  tensorflow/serving#1970), code as the protocol says it (HTTP status or gRPC code name).
- ``handoff_live_version{model}``: the latest available version (-1: none);
  ``handoff_version_available{model,version}``: 1 for each available version.
- ``handoff_versions_loaded_total{model}``, ``handoff_versions_refused_total{model,reason}``
  (``load_failed``, ``promotion_refused``...): the handoff's and the gate's decisions.
- ``handoff_session_runs_total``, ``handoff_batch_size``, ``handoff_batched_requests_total``:
  model runs, and how batching merged requests.

Bounded: a version's series go when it is unloaded, a model's all go with ``forget_model`` (a
reload that removes it), and a request for a name that is no model of this server (none of
its versions ever loaded or was refused) is counted under the one model name ``UNKNOWN_MODEL``,
so clients that send made-up names cannot grow the page. TF Serving makes a series per name.

One registry per server, not the library's global one, so that a test or a bench can run several
servers in one process without their counters mixing.
"""

from __future__ import annotations

import threading

from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the server
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

from consumer.serving import monitoring
from consumer.serving.errors import HTTP_STATUS
from consumer.serving.monitoring import Family, exponential

disable_created_metrics()  # the ``*_created`` series double the output and say nothing here

# Request latency from a few hundred microseconds (a warm predict) to a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# TF Serving's latency bounds in microseconds, "scale of 10, power of 1.8 with bucket count 33
# (~20 minutes)" (servables/tensorflow/util.cc 78, 89), and its examples per request (util.cc 59)
TF_LATENCY_BUCKETS = exponential(10, 1.8, 33)
TF_EXAMPLE_BUCKETS = exponential(1, 2, 15)
UNKNOWN_MODEL = "<unknown>"  # the model_name of every request for a name that is no model here
_GRPC_APIS = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}
_REST_APIS = {"predict", "classify", "regress"}  # a GET's API is "" (http_rest_api_util.cc)
# an HTTP status back to a canonical code, where REST did not say which (the first listed in
# HTTP_STATUS for a shared status; 500 is our own failure, INTERNAL)
_HTTP_CODES = {**{status: code for code, status in reversed(HTTP_STATUS.items())},
               500: "INTERNAL"}


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "handoff_requests", "Requests answered, by protocol, endpoint, model, version, code",
            ["protocol", "endpoint", "model", "version", "code"], registry=self.registry)
        self.latency = Histogram(
            "handoff_request_latency_seconds", "Time from a request's body to its answer",
            ["protocol", "endpoint", "model", "version"], buckets=LATENCY_BUCKETS,
            registry=self.registry)
        self.live_version = Gauge("handoff_live_version",
                                  "The latest available version of each model (-1: none)",
                                  ["model"], registry=self.registry)
        self.available = Gauge("handoff_version_available", "1 for each available version",
                               ["model", "version"], registry=self.registry)
        self.loads = Counter("handoff_versions_loaded", "Versions loaded and made available",
                             ["model"], registry=self.registry)
        self.refusals = Counter("handoff_versions_refused",
                                "Versions refused, by reason (load_failed, promotion_refused)",
                                ["model", "reason"], registry=self.registry)
        self.session_runs = Counter("handoff_session_runs", "Session runs for requests (a batch "
                                    "is one run)", registry=self.registry)
        self.batch_sizes = Histogram("handoff_batch_size", "Rows in each batch run, padding "
                                     "included", buckets=BATCH_BUCKETS, registry=self.registry)
        self.batched = Counter("handoff_batched_requests", "Requests run in a batch",
                               registry=self.registry)
        self._by_model = ((self.requests, ("protocol", "endpoint", "model", "version", "code")),
                          (self.latency, ("protocol", "endpoint", "model", "version")),
                          (self.live_version, ("model",)), (self.available, ("model", "version")),
                          (self.loads, ("model",)), (self.refusals, ("model", "reason")))
        self.tf = _TfSeries()
        self._known: set[str] = set()  # models of this server: one of their versions loaded
        self._paths: dict[tuple[str, int], str] = {}  # (model, version) -> its directory
        self._seen: dict[tuple[str, str], set[tuple]] = {}  # (model, version) -> its label sets
        self._series: dict[tuple, tuple] = {}  # observe's labels -> their two series
        self._lock = threading.Lock()

    def model_label(self, model: str) -> str:
        """The name a request's model is counted under: itself if it is a model of this server,
        "" if the request named none, else ``UNKNOWN_MODEL`` (one series for every made-up
        name, where TF Serving makes one per name and its page grows without end)."""
        return model if not model or model in self._known else UNKNOWN_MODEL

    def observe(self, protocol: str, endpoint: str, model: str, code: int | str, seconds: float,
                version: int | None = None, status: str | None = None) -> None:
        """A request answered: ``code`` as its protocol says it (HTTP status or gRPC code
        name), ``status`` the canonical code's name when REST knows it (else from ``code``)."""
        model = self.model_label(model)
        if model == UNKNOWN_MODEL:
            version = None  # no version answered: keeps the label sets bounded too
        self.tf.request(protocol, endpoint, model, status or _code_name(code), seconds)
        key = (protocol, endpoint, model, version, code)
        series = self._series.get(key)
        if series is None:  # once per label set: the library's own lookup costs ~10 us a call
            version_label, code_label = "" if version is None else str(version), str(code)
            series = (self.requests.labels(protocol, endpoint, model, version_label, code_label),
                      self.latency.labels(protocol, endpoint, model, version_label))
            with self._lock:
                self._seen.setdefault((model, version_label), set()).add(
                    (protocol, endpoint, code_label))
                self._series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def runtime(self, model: str, api: str, seconds: float) -> None:
        """The model's own run for one request (TF Serving's runtime_latency); ``api`` as
        gRPC names it: Predict, Classify, Regress."""
        self.tf.runtime_latency.observe((self.model_label(model), api, "TF1"), seconds * 1e6)

    def examples(self, model: str, count: int) -> None:
        """tf.Examples in one MultiInference request (TF Serving's request_example_counts)."""
        model = self.model_label(model)
        self.tf.example_counts.observe((model,), count)
        self.tf.example_count_total.inc((model,), count)

    def load_timed(self, model: str, step: int, path: str, seconds: float, ok: bool) -> None:
        """A version's SavedModel load (TF's load_attempt_count and load_latency, by path)."""
        with self._lock:
            self._paths[(model, step)] = path
        self.tf.load_attempts.inc((path, "success" if ok else "fail"))
        self.tf.load_latency.inc((path,), int(seconds * 1e6))

    def warmup_timed(self, model: str, step: int, path: str, seconds: float, records: int,
                     status: str = "OK") -> None:
        """A version's warm-up replay: its time and records read, by path and status."""
        with self._lock:
            self._paths[(model, step)] = path
        self.tf.warmup_latency.observe((path, status), seconds * 1e6)
        self.tf.warmup_records.inc((path, status), records)

    def session_run(self) -> None:
        self.session_runs.inc()

    def batch(self, rows: int, padded: int, requests: int) -> None:
        self.session_runs.inc()
        self.batch_sizes.observe(padded)
        self.batched.inc(requests)

    def serves(self, model: str) -> None:
        """``model`` is one of this server's (configured, or added by a reload): its requests
        are counted under its name from now on, before any version of it has loaded."""
        self._known.add(model)

    def went_live(self, model: str, step: int, available: list[int]) -> None:
        self._known.add(model)
        self.loads.labels(model).inc()
        self.available.labels(model, str(step)).set(1)
        self.live_version.labels(model).set(max(available) if available else -1)

    def unloaded(self, model: str, step: int, available: list[int]) -> None:
        if model in self._known:  # a forgotten model's last unloads do not bring it back
            self.live_version.labels(model).set(max(available) if available else -1)
        with self._lock:
            label_sets = self._seen.pop((model, str(step)), set())
            for key in [k for k in self._series if k[2] == model and k[3] == step]:
                del self._series[key]
            path = self._paths.pop((model, step), None)
        if path is not None:
            self.tf.forget_paths({path})
        for protocol, endpoint, code in label_sets:
            for metric, labels in ((self.requests, (protocol, endpoint, model, str(step), code)),
                                   (self.latency, (protocol, endpoint, model, str(step)))):
                try:
                    metric.remove(*labels)
                except KeyError:  # removed already through another code of the same endpoint
                    pass
        try:
            self.available.remove(model, str(step))
        except KeyError:
            pass

    def refused(self, model: str, reason: str) -> None:
        self._known.add(model)
        self.refusals.labels(model, reason).inc()

    def forget_model(self, model: str) -> None:
        """Remove every series of ``model``, ours and TF Serving's: a reload removed it. Later
        requests for its name count as ``UNKNOWN_MODEL``."""
        with self._lock:
            self._known.discard(model)
            for key in [k for k in self._seen if k[0] == model]:
                del self._seen[key]
            for key in [k for k in self._series if k[2] == model]:
                del self._series[key]
            paths = {self._paths.pop(k) for k in [k for k in self._paths if k[0] == model]}
        self.tf.forget_model(model)
        self.tf.forget_paths(paths)
        for metric, names in self._by_model:
            for labels in _label_sets(metric, names, model):
                try:
                    metric.remove(*labels)
                except KeyError:
                    pass

    def render(self) -> bytes:
        return self.tf.render() + generate_latest(self.registry)


class _TfSeries:
    """TF Serving's families (``consumer.serving.monitoring.Family``), named as in its source."""

    def __init__(self) -> None:
        latency, examples = TF_LATENCY_BUCKETS, TF_EXAMPLE_BUCKETS
        self.request_count = Family("/tensorflow/serving/request_count",
                                    ("model_name", "status"))
        self.request_latency = Family("/tensorflow/serving/request_latency",
                                      ("model_name", "API", "entrypoint"), latency)
        self.runtime_latency = Family("/tensorflow/serving/runtime_latency",
                                      ("model_name", "API", "runtime"), latency)
        self.example_counts = Family("/tensorflow/serving/request_example_counts", ("model",),
                                     examples)
        self.example_count_total = Family("/tensorflow/serving/request_example_count_total",
                                          ("model",))
        self.warmup_latency = Family("/tensorflow/serving/model_warmup_latency",
                                     ("model_path", "status"), latency)
        self.warmup_records = Family("/tensorflow/serving/model_warmup_records_read",
                                     ("model_path", "status"))
        self.load_attempts = Family("/tensorflow/cc/saved_model/load_attempt_count",
                                    ("model_path", "status"))
        self.load_latency = Family("/tensorflow/cc/saved_model/load_latency", ("model_path",))
        self.load_latency_by_stage = Family("/tensorflow/cc/saved_model/load_latency_by_stage",
                                            ("model_path", "stage"), latency)
        self.families = [value for value in vars(self).values() if isinstance(value, Family)]

    def request(self, protocol: str, endpoint: str, model: str, status: str,
                seconds: float) -> None:
        """As TF Serving records a request: gRPC's Predict, Classify and Regress only, every
        REST request; the latency of answered ones only."""
        if protocol == "grpc":
            api = _GRPC_APIS.get(endpoint)
            if api is None:
                return
            entrypoint = "GRPC"
        else:
            api, entrypoint = endpoint if endpoint in _REST_APIS else "", "REST"
        self.request_count.inc((model, status))
        if status == "OK":
            self.request_latency.observe((model, api, entrypoint), seconds * 1e6)

    def forget_model(self, model: str) -> None:
        for family in self.families:
            for label in ("model_name", "model"):
                if label in family.labels:
                    family.forget(label, {model})

    def forget_paths(self, paths: set[str]) -> None:
        if paths:
            for family in self.families:
                if "model_path" in family.labels:
                    family.forget("model_path", paths)

    def render(self) -> bytes:
        return monitoring.render(self.families)


def _code_name(code: int | str) -> str:
    if isinstance(code, str):
        return code
    return _HTTP_CODES.get(code, "UNKNOWN")


def _label_sets(metric, names: tuple[str, ...], model: str) -> list[tuple[str, ...]]:
    """The label values (in ``names``' order) of ``metric``'s series of ``model``, read from
    what it collects (the library has no public list of its children)."""
    found = set()
    for family in metric.collect():
        for sample in family.samples:
            if sample.labels.get("model") == model:
                found.add(tuple(sample.labels[name] for name in names))
    return sorted(found)
