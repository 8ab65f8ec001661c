"""The gRPC front, built as TF Serving's ``server.cc`` builds its server: ``PredictionService``
and ``ModelService`` (``grpc_services``) on the TCP port and, with ``--grpc_socket_path``, on a
Unix socket too; TLS on both from ``--ssl_config_file`` (``grpc_tls``); ``grpc.health.v1`` with
``--enable_grpc_healthcheck_service`` (``grpc_health``). Server reflection is always on, so
``grpcurl list`` and similar tools name every service.
"""

from __future__ import annotations

import logging
import os
import stat
from concurrent import futures
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from consumer.serving import grpc_health, grpc_tls
from consumer.serving.admission import Admission
from consumer.serving.calls import Calls
from consumer.serving.grpc_services import (MODEL, PREDICTION, ModelService,  # noqa: F401
                                            PredictionService, handlers, target)
from consumer.serving.grpc_tls import StartError
from consumer.serving.metrics import ServingMetrics
from shared import logs

log = logs.get("consumer")

# TF Serving's default, both ways (server.cc: SetMaxMessageSize); --grpc_channel_arguments lowers it
MAX_MESSAGE_BYTES = 2**31 - 1
__all__ = ["GrpcServer", "StartError", "channel_options", "PredictionService", "ModelService",
           "target"]


def channel_options(arguments: str) -> list[tuple[str, object]]:
    """``--grpc_channel_arguments`` (``key=value,...``) as gRPC options, over TF Serving's
    message size limits; integers as integers."""
    options: dict[str, object] = {"grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
                                  "grpc.max_send_message_length": MAX_MESSAGE_BYTES}
    for item in filter(None, (part.strip() for part in arguments.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return list(options.items())


def max_concurrent_rpcs(threads: int) -> int:
    """Calls running or waiting for one of ``threads``, all together: 16 a thread, at least 64."""
    return max(64, 16 * threads)


class _NoDeserializingTraceback(logging.Filter):
    """grpcio logs a traceback for a request that does not parse in a service whose reader is
    its own (health, reflection); the call is answered INTERNAL all the same, as TF Serving's
    C++ gRPC answers it. A client's mistake leaves nothing in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Exception deserializing message!"


# A front added to the server: it registers its handlers and returns its full service names
Service = Callable[[grpc.Server], list[str]]


class GrpcServer:
    """A gRPC server for both services, on TCP and, if asked, a Unix socket; TLS, health and
    reflection as the module says. Bound in the constructor."""

    def __init__(self, calls: Calls, metrics: ServingMetrics, server_options,
                 options: list | None = None, reload: Callable | None = None,
                 admission: Admission | None = None,
                 services: tuple[Service, ...] = ()) -> None:
        """``server_options``: the server's ``Options`` (host, grpc_port, grpc_threads,
        max_elements, ssl_config, grpc_socket_path, grpc_health); ``options``: gRPC's channel
        options. A ``grpc_port`` of None: the Unix socket alone. ``services``: more fronts on
        the same server and port (the Open Inference Protocol's), each adding its handlers and
        returning its service names for reflection.

        Raises ``StartError`` (one line: exit 2 with it) for an ``--ssl_config_file`` or a
        ``--grpc_socket_path`` that cannot be used, before anything is bound; ``RuntimeError``
        when the TCP port cannot be bound (in use)."""
        credentials, self.client_verify = None, False
        if server_options.ssl_config is not None:
            credentials, self.client_verify = grpc_tls.server_credentials(
                server_options.ssl_config)
        socket_path = server_options.grpc_socket_path
        if socket_path:
            _check_socket_path(socket_path)
        quiet = logging.getLogger("grpc._common")
        if not any(isinstance(f, _NoDeserializingTraceback) for f in quiet.filters):
            quiet.addFilter(_NoDeserializingTraceback())
        # Calls waiting for a thread are bounded too: past this many in all, RESOURCE_EXHAUSTED
        # at once (grpcio's own answer), not a queue without end
        self.server = grpc.server(futures.ThreadPoolExecutor(server_options.grpc_threads,
                                                             thread_name_prefix="grpc"),
                                  options=options or channel_options(""),
                                  maximum_concurrent_rpcs=max_concurrent_rpcs(
                                      server_options.grpc_threads))
        self.server.add_generic_rpc_handlers([
            handlers(PREDICTION, PredictionService(calls, metrics, admission=admission,
                                                    max_elements=server_options.max_elements)),
            handlers(MODEL, ModelService(calls, metrics, reload))])  # never bounded: status
        names = [PREDICTION.full_name, MODEL.full_name, reflection.SERVICE_NAME]
        for service in services:
            names.extend(service(self.server))
        self.health = None
        if server_options.grpc_health:
            self.health = grpc_health.ReadinessHealth(
                lambda: grpc_health.all_available(calls.models))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
            names.append(health.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        self.tls = credentials is not None
        self.host, self.port, self.socket_path = server_options.host, None, None
        if server_options.grpc_port is not None:
            self.port = self._listen(_address(self.host, server_options.grpc_port), credentials)
        if socket_path:
            try:
                self._listen(f"unix:{socket_path}", credentials)
            except RuntimeError as err:
                raise StartError(f"--grpc_socket_path {socket_path}: cannot listen: "
                                 f"{err}") from None
            self.socket_path = socket_path

    def _listen(self, address: str, credentials) -> int:
        port = self.server.add_secure_port(address, credentials) if credentials is not None \
            else self.server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return port

    def start(self) -> None:
        self.server.start()
        if self.health is not None:
            self.health.start()
        log.info("grpc_serving", port=self.port, socket=self.socket_path,
                 tls=("mutual" if self.client_verify else "server") if self.tls else None,
                 health=self.health is not None)

    def stop(self, grace: float) -> None:
        """Refuse new calls; those in flight get ``grace`` seconds to finish. Health says
        NOT_SERVING from the first moment."""
        if self.health is not None:
            self.health.close()
        self.server.stop(grace).wait()
        if self.socket_path and _is_socket(self.socket_path):
            os.unlink(self.socket_path)  # ours: a later start should not meet it


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_socket_path(path: str) -> None:
    """A Unix socket path gRPC can bind: short enough for ``sun_path``, in a directory that
    exists, and not an existing file that is not a socket (gRPC replaces a stale socket)."""
    where = f"--grpc_socket_path {path}"
    if len(os.fsencode(path)) > 107:
        raise StartError(f"{where}: longer than the 107 bytes a Unix socket path may have")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise StartError(f"{where}: {parent} is not a directory")
    if os.path.lexists(path) and not _is_socket(path):
        raise StartError(f"{where}: exists and is not a socket")


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False
