"""Prometheus metrics of the serving consumer, at TF Serving's ``/monitoring/prometheus/metrics``.

One registry per server, not the library's global one, so that a test or a bench can run several
servers in one process without their counters mixing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the server
from prometheus_client import disable_created_metrics

disable_created_metrics()  # the ``*_created`` series double the output and say nothing here

# Request latency from a few hundred microseconds (a warm predict) to a second.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("handoff_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram("handoff_request_latency_seconds",
                                 "Time from a request's body being read to its answer, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.live_version = Gauge("handoff_live_version", "The version answering requests (-1: none)",
                                  registry=self.registry)
        self.live_version.set(-1)
        self.loads = Counter("handoff_versions_loaded", "Versions loaded and made live",
                             registry=self.registry)
        self.refusals = Counter("handoff_versions_refused",
                                "Versions refused, by reason (load_failed, promotion_refused)",
                                ["reason"], registry=self.registry)

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def went_live(self, step: int) -> None:
        self.loads.inc()
        self.live_version.set(step)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
