"""``--monitoring_config_file`` and TF Serving's own Prometheus series, as its exporter writes them.

The file is a ``MonitoringConfig`` text proto (tensorflow_serving/config/monitoring_config.proto:
``prometheus_config { enable: true path: "/metrics" }``). TF Serving reads it in
model_servers/server.cc (lines 441-445 at 9d981c5: ``ParseProtoTextFile`` only when the flag is
given) and registers the exporter in http_server.cc (lines 224-239): only if ``enable`` is true,
at ``path`` or, when that is empty, at ``PrometheusExporter::kPrometheusPath``,
``/monitoring/prometheus/metrics`` (util/prometheus_exporter.cc). Without the flag TF Serving
serves no metrics at all; we serve them at that default path (as this server always has), and
with ``enable: false`` we serve none, as TF Serving. A file that cannot be read or parsed, or a
path that is not an absolute URL path (TF Serving would register one that no request can match),
stops the start with one line.

The families are TF's ``monitoring::Counter`` and ``monitoring::Sampler`` as TF Serving's
exporter renders them (util/prometheus_exporter.cc): the TF name with every character outside
``[a-zA-Z0-9_]`` turned into ``:`` (``/tensorflow/serving/request_count`` is scraped as
``:tensorflow:serving:request_count``), no HELP line, a counter's samples under the family's own
name (no ``_total``), histogram bounds printed as ``%g`` with six digits and TF's bucket rule
(a value equal to a bound falls in the next bucket: ``std::upper_bound`` in
core/lib/histogram/histogram.cc). ``prometheus_client`` cannot write these (it adds ``_total``
and HELP), so they are written here, beside its output of our ``handoff_*`` series.
"""

from __future__ import annotations

import bisect
import re
import threading
from pathlib import Path

from consumer.serving import textproto

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
MAX_CONFIG_BYTES = 1 << 16  # a MonitoringConfig is two fields: anything larger is not one


class MonitoringConfigError(ValueError):
    """The file cannot be used; the message is one line for ``cli.fail``."""


MonitoringConfig = textproto.message_class(
    "tensorflow_serving/config/monitoring_config.proto", "tensorflow.serving",
    {"PrometheusConfig": [("enable", 1, "bool"), ("path", 2, "string")],
     "MonitoringConfig": [("prometheus_config", 1, "PrometheusConfig")]})


def metrics_path(config_file: Path | None) -> str | None:
    """Where the REST port serves the metrics: the config's path, TF Serving's default path
    without a file (TF Serving: nowhere), None when the file says ``enable: false``."""
    if config_file is None:
        return DEFAULT_PATH
    where = f"--monitoring_config_file {config_file}"
    config = textproto.read(config_file, MonitoringConfig, where, "a MonitoringConfig",
                            MonitoringConfigError, MAX_CONFIG_BYTES)
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    path = prometheus.path or DEFAULT_PATH
    if not path.startswith("/") or any(c in path for c in "?# \t\r\n"):
        raise MonitoringConfigError(f"{where}: prometheus_config.path {path!r} is not a URL "
                                    "path (it starts with '/' and has no query)")
    return path


def exponential(scale: float, growth: float, count: int) -> list[float]:
    """TF's ``monitoring::Buckets::Exponential``: ``count`` bounds, each the last times
    ``growth`` (a product carried forward, as TF computes it); +Inf follows."""
    bounds, bound = [], float(scale)
    for _ in range(count):
        bounds.append(bound)
        bound *= growth
    return bounds


def prometheus_name(tf_name: str) -> str:
    """The scraped name of a TF metric (prometheus_exporter.cc, GetPrometheusMetricName)."""
    name = re.sub(r"[^a-zA-Z0-9_]", ":", tf_name)
    return "_" + name if name[:1].isdigit() else name


def _label_value(value: str) -> str:
    # TF escapes \ and " only; a newline is escaped too, so that one odd name cannot break
    # the page for every other series
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Family:
    """One TF metric: its label names and a value per label set (a counter's int, or a
    histogram's bucket counts and sum)."""

    def __init__(self, tf_name: str, labels: tuple[str, ...],
                 buckets: list[float] | None = None) -> None:
        self.name, self.labels, self.buckets = prometheus_name(tf_name), labels, buckets
        self.tf_name = tf_name
        self.cells: dict[tuple[str, ...], list] = {}
        self._lock = threading.Lock()

    def inc(self, labels: tuple[str, ...], amount: int = 1) -> None:
        with self._lock:
            cell = self.cells.setdefault(labels, [0])
            cell[0] += amount

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        index = bisect.bisect_right(self.buckets, value)  # TF's upper_bound
        with self._lock:
            cell = self.cells.get(labels)
            if cell is None:
                cell = self.cells[labels] = [[0] * (len(self.buckets) + 1), 0.0]
            cell[0][index] += 1
            cell[1] += value

    def forget(self, label: str, values: set[str]) -> None:
        """Remove every series whose ``label`` is one of ``values``."""
        at = self.labels.index(label)
        with self._lock:
            for key in [k for k in self.cells if k[at] in values]:
                del self.cells[key]

    def lines(self) -> list[str]:
        kind = "histogram" if self.buckets is not None else "counter"
        out = [f"# TYPE {self.name} {kind}"]
        with self._lock:
            cells = [(k, [list(v[0]), v[1]] if self.buckets is not None else list(v))
                     for k, v in self.cells.items()]
        for key, cell in cells:
            labels = ",".join(f'{n}="{_label_value(v)}"' for n, v in zip(self.labels, key))
            if self.buckets is None:
                out.append(f"{self.name}{{{labels}}} {cell[0]}")
                continue
            prefix = f"{self.name}_bucket{{{labels}{',' if labels else ''}"
            total = 0
            for i, count in enumerate(cell[0]):
                total += count
                bound = f"{self.buckets[i]:.6g}" if i < len(self.buckets) else "+Inf"
                out.append(f'{prefix}le="{bound}"}} {total}')
            out.append(f"{self.name}_sum{{{labels}}} {cell[1]:.6g}")
            out.append(f"{self.name}_count{{{labels}}} {total}")
        return out


def render(families: list[Family]) -> bytes:
    """The families as TF Serving's exporter writes its page: sorted by TF name (its
    descriptor map is a std::map), one line each, a newline at the end."""
    lines: list[str] = []
    for family in sorted(families, key=lambda f: f.tf_name):
        lines.extend(family.lines())
    return ("\n".join(lines) + "\n").encode()
