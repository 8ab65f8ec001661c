"""``--enable_grpc_healthcheck_service``: ``grpc.health.v1.Health`` on the gRPC ports.

TF Serving turns on gRPC's default health service and sets "ModelService" and
"PredictionService" SERVING once its server is built (model_servers/server.cc lines 415-424 at
9d981c5); gRPC's default service answers for "" (the whole server) too. TF Serving builds its
server only after its models' first versions have loaded, so SERVING there means "ready". We open
the ports at once, so the status here is what readiness means: SERVING while every configured
model has a version available, NOT_SERVING otherwise, and NOT_SERVING for good once the server
begins to stop (in-flight calls finish; probes see it go). Each name answers the same: "",
TF Serving's two short names, and the services' full names (``tensorflow.serving.
PredictionService``...), which is what most health probes pass. An unknown name is NOT_FOUND,
as the protocol says.

``Check`` reads the models at each call; ``Watch`` streams are told of a change within
``POLL_SECONDS``. A change is logged once (``grpc_health``), not at every probe.
"""

from __future__ import annotations

import threading

from grpc_health.v1 import health, health_pb2

from shared import logs

log = logs.get("consumer")

POLL_SECONDS = 0.5
NAMES = ("", "ModelService", "PredictionService", "tensorflow.serving.ModelService",
         "tensorflow.serving.PredictionService")
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def all_available(models) -> bool:
    """Whether every model of ``models`` (a ``Models``) has a version it can answer from."""
    return all(model.manager.steps() for model in models)


class ReadinessHealth(health.HealthServicer):
    """gRPC's reference health servicer, its status kept to ``ready()``."""

    def __init__(self, ready) -> None:
        super().__init__(experimental_non_blocking=True)  # a Watch holds no thread
        self._ready = ready
        self._serving: bool | None = None
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="grpc-health", daemon=True)

    def start(self) -> None:
        self.refresh()
        self._poller.start()

    def refresh(self) -> None:
        """Read readiness now, and tell every name and watcher if it changed."""
        error = None
        try:
            serving = bool(self._ready())
        except Exception as err:  # a defect of ours: not ready, and said once with the change
            serving, error = False, f"{type(err).__name__}: {err}"
        if serving == self._serving or self._closed.is_set():
            return
        self._serving = serving
        for name in NAMES:
            self.set(name, _SERVING if serving else _NOT_SERVING)
        log.info("grpc_health", status="SERVING" if serving else "NOT_SERVING",
                 **({"error": error} if error else {}))

    def Check(self, request, context):  # noqa: N802 - gRPC's method name
        self.refresh()
        return super().Check(request, context)

    def _poll(self) -> None:
        while not self._closed.wait(POLL_SECONDS):
            self.refresh()

    def close(self) -> None:
        """NOT_SERVING for good: the server is stopping."""
        self._closed.set()
        self.enter_graceful_shutdown()
        log.info("grpc_health", status="NOT_SERVING", reason="stopping")
