"""Prometheus metrics of the model server, at TF Serving's ``/monitoring/prometheus/metrics``.

Requests are counted and timed by protocol (``rest``, ``grpc``), endpoint, model and the version
that answered (TF Serving has no per-version figures: tensorflow/serving#1970). A version's
series are removed when it is unloaded, so hundreds of reloads do not grow the registry.

One registry per server, not the library's global one, so that a test or a bench can run several
servers in one process without their counters mixing.
"""

from __future__ import annotations

import threading

from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the server
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

disable_created_metrics()  # the ``*_created`` series double the output and say nothing here

# Request latency from a few hundred microseconds (a warm predict) to a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


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
        self._seen: dict[tuple[str, str], set[tuple]] = {}  # (model, version) -> its label sets
        self._series: dict[tuple, tuple] = {}  # observe's labels -> their two series
        self._lock = threading.Lock()

    def observe(self, protocol: str, endpoint: str, model: str, code: int | str, seconds: float,
                version: int | None = None) -> None:
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

    def session_run(self) -> None:
        self.session_runs.inc()

    def batch(self, rows: int, padded: int, requests: int) -> None:
        self.session_runs.inc()
        self.batch_sizes.observe(padded)
        self.batched.inc(requests)

    def went_live(self, model: str, step: int, available: list[int]) -> None:
        self.loads.labels(model).inc()
        self.available.labels(model, str(step)).set(1)
        self.live_version.labels(model).set(max(available) if available else -1)

    def unloaded(self, model: str, step: int, available: list[int]) -> None:
        self.live_version.labels(model).set(max(available) if available else -1)
        with self._lock:
            label_sets = self._seen.pop((model, str(step)), set())
            for key in [k for k in self._series if k[2] == model and k[3] == step]:
                del self._series[key]
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
        self.refusals.labels(model, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
