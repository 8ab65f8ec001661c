"""The REST front: TF Serving's paths and answers on uvicorn, over ``consumer.serving.rest``.

A plain ASGI app, so that paths are matched as TF Serving matches them: on the raw path (``%2F``
inside a model name is part of the name), with its own patterns (``http_rest_api_util.cc``),
case-insensitive except for the verb. Handlers are thin: read the body, then parse, run and
render on a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import socket
import threading
import time
from typing import Callable
from urllib.parse import unquote

import uvicorn

from consumer.serving import json_render
from consumer.serving.admission import Admission
from consumer.serving.calls import Target
from consumer.serving.errors import ServingError, invalid
from consumer.serving.metrics import CONTENT_TYPE_LATEST, ServingMetrics
from consumer.serving.rest import RestApi
from shared import logs

log = logs.get("consumer")

MAX_BODY_BYTES = 16 * 1024 * 1024  # a larger body is refused with 413
SHUTDOWN_GRACE_SECONDS = 30  # requests in flight at SIGTERM get this long to finish
KEEP_ALIVE = 60  # seconds an idle client connection stays open (uvicorn's default is 5)
METRICS_PATH = "/monitoring/prometheus/metrics"

_REST = re.compile(r"/v1/.*", re.I | re.S)
_POST = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:"
                   r"(classify|regress|predict)", re.I)
_GET = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?",
                  re.I)
_JSON = [(b"content-type", b"application/json")]

Call = Callable[[bytes], tuple[bytes, int | None]]  # body -> (answer, the version that gave it)


class Reply:
    def __init__(self, status: int, body: bytes, headers: list | None = None,
                 version: int | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or _JSON
        self.version = version  # the version that answered


def error_reply(error: ServingError, status: int | None = None) -> Reply:
    return Reply(status or error.http_status, json_render.render_error(error.message))


class BodyTooLarge(Exception):
    """A body over ``MAX_BODY_BYTES``: HTTP's own 413, before anything is parsed."""


class Workers:
    """Threads that run calls for the event loop and hand each result back to it. A thinner
    hop than ``run_in_executor``, which wraps a concurrent future in an asyncio one and chains
    the two: this is one queue put, and one ``call_soon_threadsafe`` back. Measured with wrk
    (4 connections) on 2 cores, with uvicorn's proxy-headers layer dropped too: a server
    answering a constant went from 4,950 to 6,660 requests/s, the mlp's predict from 1,650 to
    2,040."""

    def __init__(self, threads: int, name: str) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def run(self, call: Callable, *args) -> asyncio.Future:
        """``call(*args)`` on a worker; the future is resolved on the running loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((loop, future, call, args))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            loop, future, call, args = item
            try:
                result, error = call(*args), None
            except BaseException as err:  # handed to the awaiting handler, which re-raises it
                result, error = None, err
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop closed past the shutdown grace: nobody waits
                pass

    def shutdown(self) -> None:
        """Finish the calls queued, then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.cancelled():  # the client went away and its handler with it
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class RestApp:
    """The ASGI app: route, read the body, hand the call to the pool, send the answer."""

    def __init__(self, api: RestApi, metrics: ServingMetrics, pool: Workers,
                 admission: Admission) -> None:
        self.api, self.metrics, self.pool, self.admission = api, metrics, pool, admission

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):  # TF Serving matches the query string as part of the path
            path += "?" + scope["query_string"].decode("latin-1")
        if path == METRICS_PATH and method == "GET":
            await _send(send, Reply(200, self.metrics.render(),
                                    [(b"content-type", CONTENT_TYPE_LATEST.encode())]))
            return
        if not _REST.fullmatch(path):
            await _send(send, Reply(404, json_render.render_error(f"Not found: {path}")))
            return
        endpoint, model, call, admitted = "malformed", "", None, False
        try:
            endpoint, model, call = self._route(method, path)
            self.admission.enter()  # past the bound: 503 now, not a place in a long queue
            admitted = True
            body = await _read_body(scope, receive)
        except ServingError as err:
            reply = error_reply(err)
        except BodyTooLarge:
            reply = error_reply(invalid(f"request body is over the limit of {MAX_BODY_BYTES} "
                                        "bytes"), 413)
        else:
            reply = await self.pool.run(self._answer, endpoint, call, body)
        finally:
            if admitted:
                self.admission.leave()
        self.metrics.observe("rest", endpoint, model, reply.status, time.perf_counter() - started,
                             reply.version)
        await _send(send, reply)

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
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:  # a chunked body declares no length: counted as it comes
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send, reply: Reply) -> None:
    await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
    await send({"type": "http.response.body", "body": reply.body})


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Its protocol is named: asyncio sets TCP_NODELAY only on sockets
    whose ``proto`` is IPPROTO_TCP, and without it every keep-alive response (headers and body
    in two writes) waits about 40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn on a thread of its own; the socket is bound in the constructor, so a port in use
    is an error at start and ``port`` is the real one when 0 was asked for."""

    def __init__(self, api: RestApi, metrics: ServingMetrics, options,
                 admission: Admission) -> None:
        """``options``: the server's ``Options`` (host, rest_port, rest_threads, ...)."""
        self.socket = listen(options.host, options.rest_port)
        self.host, self.port = options.host, self.socket.getsockname()[1]
        self.pool = Workers(options.rest_threads, "rest")
        # No proxy-headers middleware (uvicorn's default): nothing here reads the client's
        # address, and it is a coroutine layer on every request.
        config = uvicorn.Config(RestApp(api, metrics, self.pool, admission), log_config=None,
                                access_log=False, lifespan="off", timeout_keep_alive=KEEP_ALIVE,
                                proxy_headers=False,
                                loop="uvloop", http="httptools",
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
