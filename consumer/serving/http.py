"""The REST front: TF Serving's paths and answers on uvicorn, over ``consumer.serving.rest``.

A plain ASGI app, so that paths are matched as TF Serving matches them: on the raw path (``%2F``
inside a model name is part of the name), with its own patterns (``http_rest_api_util.cc``),
case-insensitive except for the verb. Handlers are thin: read the body, then queue the parse,
run and render for a small thread pool (``consumer.serving.workers``), never on the event loop.

Every client is bounded: its connection in time, pipelining and descriptors
(``consumer.serving.connections``); its body in size (``MAX_BODY_BYTES``, 413) and in time (a
pause of ``BODY_TIMEOUT`` between its parts, or ``BODY_SECONDS`` in all: 408); its request in
how long it waits to run and in ``--rest_api_timeout_in_ms`` (503, 504). A request counts for
admission only once its body is in, so a client that sends headers and then holds its body
back takes nothing from the others.

``/v2`` is the Open Inference Protocol's (``consumer.serving.oip_rest``): the same bounds, the
same worker pool and admission; its health checks are answered on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from typing import Callable
from urllib.parse import unquote

import uvicorn

from consumer.serving import connections, json_render, monitoring
from consumer.serving.admission import Admission, queue_bound
from consumer.serving.calls import Target
from consumer.serving.connections import KEEP_ALIVE
from consumer.serving.errors import ServingError, invalid
from consumer.serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from consumer.serving.oip_rest import OipRest, Route
from consumer.serving.oip_rest import error as oip_error
from consumer.serving.rest import RestApi
from consumer.serving.workers import Workers
from shared import logs

log = logs.get("consumer")

MAX_BODY_BYTES = 16 * 1024 * 1024  # a larger body is refused with 413
BODY_TIMEOUT = 5.0  # seconds a body may pause between its parts (408 past it)
BODY_SECONDS = 60.0  # seconds a whole body may take (16 MiB at 280 KB/s)
SHUTDOWN_GRACE_SECONDS = 30  # requests in flight at SIGTERM get this long to finish
METRICS_PATH = monitoring.DEFAULT_PATH  # without --monitoring_config_file

_REST = re.compile(r"/v1/.*", re.I | re.S)
_OIP = re.compile(r"/v2(?:[/?].*)?", re.S)
_POST = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:"
                   r"(classify|regress|predict)", re.I)
_GET = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?",
                  re.I)
_ORIGIN = re.compile(rb"https?://")
_JSON = [(b"content-type", b"application/json")]
# TF Serving's CORS headers (http_rest_api_util.cc, AddCORSHeaders), on every /v1/ answer
_CORS = [(b"access-control-allow-origin", b"*"), (b"access-control-allow-methods", b"POST, GET"),
         (b"access-control-allow-headers", b"Content-Type")]
_CLOSE = [(b"connection", b"close")]

Call = Callable[[bytes], tuple[bytes, int | None]]  # body -> (answer, the version that gave it)


class Reply:
    def __init__(self, status: int, body: bytes, headers: list | None = None,
                 version: int | None = None, code: str | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or _JSON
        self.version = version  # the version that answered
        self.code = code  # the canonical code of an error, for the metrics


def error_reply(error: ServingError, status: int | None = None,
                headers: list | None = None) -> Reply:
    return Reply(status or error.http_status, json_render.render_error(error.message),
                 _JSON + headers if headers else None, code=error.code)


class BodyTooLarge(Exception):
    """A body over ``MAX_BODY_BYTES``: HTTP's own 413, before anything is parsed."""


class BodyTooSlow(Exception):
    """A body that paused past ``BODY_TIMEOUT``, or took over ``BODY_SECONDS``: 408, closed."""


class ClientGone(Exception):
    """The client closed its connection before its body was in: nobody to answer."""


class RestApp:
    """The ASGI app: route, read the body, queue the call for the pool, send the answer."""

    def __init__(self, api: RestApi, metrics: ServingMetrics, pool: Workers,
                 cors: bool = False, metrics_path: str | None = METRICS_PATH,
                 oip: OipRest | None = None) -> None:
        """``cors``: --rest_api_enable_cors_support, TF Serving's CORS headers on /v1/ answers;
        ``metrics_path``: where the metrics are served (--monitoring_config_file), or None;
        ``oip``: the Open Inference Protocol's front on /v2, or None."""
        self.api, self.metrics, self.pool, self.oip = api, metrics, pool, oip
        self.cors = _CORS if cors else []
        self.metrics_path = metrics_path

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["raw_path"].decode("latin-1")
        # the exporter's handler is matched on the path alone, before the REST dispatcher
        # (http_server.cc 224-239), and answers any method
        if path == self.metrics_path:
            await _send(send, Reply(200, self.metrics.render(),
                                    [(b"content-type", CONTENT_TYPE_LATEST.encode())]))
            return
        if self.oip is not None and _OIP.fullmatch(path):
            await self._serve_oip(scope, receive, send, method, path, started)
            return
        if scope.get("query_string"):  # TF Serving matches the query string as part of the path
            path += "?" + scope["query_string"].decode("latin-1")
        if not _REST.fullmatch(path):
            await _send(send, Reply(404, json_render.render_error(f"Not found: {path}")))
            return
        endpoint, model = "malformed", ""
        try:
            if method == "OPTIONS":
                endpoint, reply = "preflight", self._preflight(scope)
            else:
                endpoint, model, call = self._route(method, path)
                body = await _read_body(scope, receive)
                reply = await self.pool.run(self._answer, endpoint, call, body)
        except ServingError as err:
            reply = error_reply(err)
        except BodyTooLarge:
            reply = error_reply(invalid(f"request body is over the limit of {MAX_BODY_BYTES} "
                                        "bytes"), 413)
        except BodyTooSlow as err:
            reply = error_reply(invalid(str(err)), 408, _CLOSE)
        except ClientGone:
            return
        if self.cors:
            reply.headers = reply.headers + self.cors
        self.metrics.observe("rest", endpoint, model, reply.status, time.perf_counter() - started,
                             reply.version, reply.code)
        await _send(send, reply)

    async def _serve_oip(self, scope, receive, send, method: str, path: str,
                         started: float) -> None:
        """A /v2 request: routed, its body read under the same bounds as /v1, run on the pool
        (health checks inline), answered as the protocol answers, errors as {"error": ...}."""
        endpoint, model = "oip_malformed", ""
        try:
            route = self.oip.route(method, path, scope["headers"])
            endpoint, model = route.endpoint, route.model
            body = await _read_body(scope, receive)
            reply = self._answer_oip(route, body) if route.inline else \
                await self.pool.run(self._answer_oip, route, body)
        except ServingError as err:
            reply = _oip_reply(oip_error(err), err.code)
        except BodyTooLarge:
            reply = _oip_reply(oip_error(invalid(f"request body is over the limit of "
                                                 f"{MAX_BODY_BYTES} bytes")), "INVALID_ARGUMENT")
            reply.status = 413
        except BodyTooSlow as err:
            reply = _oip_reply(oip_error(invalid(str(err))), "INVALID_ARGUMENT")
            reply.status, reply.headers = 408, reply.headers + _CLOSE
        except ClientGone:
            return
        self.metrics.observe("rest", endpoint, model, reply.status, time.perf_counter() - started,
                             reply.version, reply.code)
        await _send(send, reply)

    def _answer_oip(self, route: Route, body: bytes) -> Reply:
        try:
            return _oip_reply(route.call(body))
        except ServingError as err:  # the client's mistake, or a model's: one line, no trace
            return _oip_reply(oip_error(err), err.code)
        except Exception as err:  # a defect of ours: one request fails, the server goes on
            log.exception("request_failed", endpoint=route.endpoint,
                          error=f"{type(err).__name__}: {err}")
            return Reply(500, json_render.render_error(f"internal error: {type(err).__name__}"),
                         code="INTERNAL")

    def _preflight(self, scope) -> Reply:
        """TF Serving's answer to OPTIONS on a /v1/ path (http_server.cc, ProcessRequest): 200
        and no body if the request names an http(s) Origin, whether or not CORS is enabled;
        else FAILED_PRECONDITION, 400 (TF Serving's body is empty; ours says why, as JSON)."""
        for name, value in scope["headers"]:
            if name == b"origin" and _ORIGIN.search(value):
                return Reply(200, b"", [(b"content-length", b"0")])
        raise ServingError("FAILED_PRECONDITION", "Origin header is missing in CORS preflight")

    def _route(self, method: str, path: str) -> tuple[str, str, Call]:
        """(endpoint, model name, the call) for a path; a ``ServingError`` if it names none."""
        if method == "POST" and (match := _POST.fullmatch(path)):
            target, verb = _target(match), match.group(4)
            calls = {"predict": self.api.predict, "classify": self.api.classify,
                     "regress": self.api.regress}
            if verb in calls:  # the pattern ignores case; TF Serving's verbs do not
                return verb, target.model, lambda body: calls[verb](target, body)
        elif method == "GET" and (match := _GET.fullmatch(path)):
            if not match.group(1):
                raise invalid("Missing model name in request.")
            target = _target(match)
            if match.group(4) == "metadata":
                return "metadata", target.model, lambda body: self.api.metadata(target)
            return "status", target.model, lambda body: self.api.status(target)
        raise invalid(f"Malformed request: {method} {path}")

    def _answer(self, endpoint: str, call: Call, body: bytes) -> Reply:
        try:
            answer, version = call(body)
        except ServingError as err:  # the client's mistake, or a model's: one line, no trace
            return error_reply(err)
        except Exception as err:  # a defect of ours: one request fails, the server goes on
            log.exception("request_failed", endpoint=endpoint,
                          error=f"{type(err).__name__}: {err}")
            return Reply(500, json_render.render_error(f"internal error: {type(err).__name__}"))
        if version is None:
            return Reply(200, answer)
        return Reply(200, answer, _JSON + [(b"x-model-version", str(version).encode())], version)


def _oip_reply(response, code: str | None = None) -> Reply:
    return Reply(response.status, response.body, response.headers, response.version, code)


def _target(match: re.Match) -> Target:
    version = match.group(2)
    if version is not None and int(version) >= 2**63:
        raise invalid(f"Failed to convert version: {version} to numeric.")
    label = unquote(match.group(3)) if match.group(3) is not None else None
    return Target(unquote(match.group(1)), int(version) if version else None, label)


async def _read_body(scope, receive) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
            raise BodyTooLarge  # from the header, before a byte of the body is read
    chunks, size = [], 0
    clock = asyncio.get_running_loop().time
    last = clock() + BODY_SECONDS
    try:
        async with asyncio.timeout(BODY_TIMEOUT) as pause:  # one timer, moved at each part
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_BYTES:  # a chunked body declares no length: counted as it comes
                    raise BodyTooLarge
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
                pause.reschedule(min(clock() + BODY_TIMEOUT, last))
    except TimeoutError:
        raise BodyTooSlow(f"the request's body took over {BODY_SECONDS:g} s" if clock() >= last
                          else f"the request's body paused over {BODY_TIMEOUT:g} s") from None


async def _send(send, reply: Reply) -> None:
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    await send({"type": "http.response.body", "body": reply.body})


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket. Its protocol is named: asyncio sets TCP_NODELAY only on sockets
    whose ``proto`` is IPPROTO_TCP, and without it every keep-alive response (headers and body
    in two writes) waits about 40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn on a thread of its own; the socket is bound in the constructor, so a port in use
    is an error at start and ``port`` is the real one when 0 was asked for."""

    def __init__(self, api: RestApi, metrics: ServingMetrics, options,
                 admission: Admission, oip: OipRest | None = None) -> None:
        """``options``: the server's ``Options`` (host, rest_port, rest_threads, rest_timeout,
        cors...); ``admission``: the places to run, shared with gRPC; ``oip``: the Open
        Inference Protocol's front on /v2, or None."""
        backlog = connections.backlog()
        self.socket = listen(options.host, options.rest_port, backlog)
        self.host, self.port = options.host, self.socket.getsockname()[1]
        # the REST timeout is the REST front's; the wait it allows goes for gRPC's places too
        admission.max_wait = queue_bound(options.rest_timeout)
        self.pool = Workers(options.rest_threads, "rest", admission, admission.max_wait,
                            options.rest_timeout)
        self.connections = connections.Connections()
        # No proxy-headers middleware (uvicorn's default): nothing here reads the client's
        # address, and it is a coroutine layer on every request.
        app = RestApp(api, metrics, self.pool, options.cors, options.metrics_path, oip)
        config = uvicorn.Config(app, log_config=None,
                                access_log=False, lifespan="off", timeout_keep_alive=KEEP_ALIVE,
                                proxy_headers=False, loop="uvloop", backlog=backlog,
                                http=connections.protocol(self.connections), ws="none",
                                timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)
        self.server = uvicorn.Server(config)
        # uvicorn's start and stop lines repeat our ``serving`` event; keep its warnings only
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop taking connections, let requests in flight finish, then return."""
        self.server.should_exit = True
        self.thread.join(timeout=grace + 5)
        self.pool.shutdown()
        self.socket.close()
