"""HTTP for serve mode: TF Serving's REST paths on Starlette, served by uvicorn on its own thread.

Handlers are thin: read the body, hand the call to ``consumer.serving.calls`` on a small pool,
render. Nothing blocking runs on the event loop: parsing, ``Session.run`` (which releases the
GIL) and rendering all happen on the pool. The consumer's loop loads versions on the main
thread, so a load never queues behind requests, nor they behind it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from consumer.serving import metrics as metrics_module
from consumer.serving.calls import Api
from consumer.serving.json_tensor import ApiError, dumps
from shared import logs

log = logs.get("consumer")

MAX_BODY_BYTES = 16 * 1024 * 1024  # a larger predict body is refused with 413
PREDICT_THREADS = 4  # Session.run releases the GIL: a few threads keep 2 cores busy
SHUTDOWN_GRACE_SECONDS = 30  # requests in flight at SIGTERM get this long to finish

JSON = "application/json"


def build_app(api: Api, metrics: metrics_module.ServingMetrics, pool: ThreadPoolExecutor) -> Starlette:
    async def answer(endpoint: str, call: Callable[[], tuple[bytes, dict]]) -> Response:
        started = time.perf_counter()
        try:
            body, headers = await asyncio.get_running_loop().run_in_executor(pool, call)
            code = 200
        except ApiError as err:
            body, headers, code = dumps({"error": err.message}), {}, err.status
        except Exception as err:  # a defect of ours: one request fails, the server goes on
            log.exception("request_failed", endpoint=endpoint, error=f"{type(err).__name__}: {err}")
            body, headers, code = dumps({"error": f"internal error: {type(err).__name__}"}), {}, 500
        metrics.observe(endpoint, code, time.perf_counter() - started)
        return Response(body, code, headers, media_type=JSON)

    def version_of(request: Request) -> str | None:
        return request.path_params.get("version")

    async def status(request: Request) -> Response:
        name, version = request.path_params["name"], version_of(request)
        return await answer("status", lambda: (dumps(api.status(name, version)), {}))

    async def metadata(request: Request) -> Response:
        name, version = request.path_params["name"], version_of(request)
        return await answer("metadata", lambda: (dumps(api.metadata(name, version)), {}))

    async def predict(request: Request) -> Response:
        name, version = request.path_params["name"], version_of(request)
        try:
            body = await _read_body(request)
        except ApiError as err:
            metrics.observe("predict", err.status, 0.0)
            return Response(dumps({"error": err.message}), err.status, media_type=JSON)

        def call() -> tuple[bytes, dict]:
            answer_body, step = api.predict(name, version, body)
            return answer_body, {"X-Model-Version": str(step)}
        return await answer("predict", call)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics_module.CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        # Unknown paths and methods get TF Serving's error body too, not Starlette's text.
        return Response(dumps({"error": exc.detail}), exc.status_code, media_type=JSON)

    model, versioned = "/v1/models/{name}", "/v1/models/{name}/versions/{version:int}"
    routes = [Route(base + suffix, handler, methods=[method])
              for base in (model, versioned)
              for suffix, handler, method in (("", status, "GET"), ("/metadata", metadata, "GET"),
                                              (":predict", predict, "POST"))]
    routes.append(Route("/monitoring/prometheus/metrics", prometheus, methods=["GET"]))
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of "
                            f"{MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is over the limit of {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Its protocol is named: asyncio sets TCP_NODELAY only on sockets
    whose ``proto`` is IPPROTO_TCP, and without it every keep-alive response (headers and body
    in two writes) waits about 40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn on a thread of its own; the socket is bound in the constructor, so a port in use
    is an error at start and ``port`` is the real one when 0 was asked for."""

    def __init__(self, api: Api, metrics: metrics_module.ServingMetrics, host: str,
                 port: int) -> None:
        self.socket = _listen(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        self.pool = ThreadPoolExecutor(PREDICT_THREADS, thread_name_prefix="predict")
        config = uvicorn.Config(build_app(api, metrics, self.pool), log_config=None,
                                access_log=False, lifespan="off",
                                timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)
        self.server = uvicorn.Server(config)
        # uvicorn's start and stop lines repeat our ``serving`` event; keep its warnings only
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop taking connections, let requests in flight finish, then return."""
        self.server.should_exit = True
        self.thread.join(timeout=SHUTDOWN_GRACE_SECONDS + 5)
        self.pool.shutdown(wait=True)
        self.socket.close()
