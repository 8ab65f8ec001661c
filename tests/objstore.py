"""A real S3 endpoint on 127.0.0.1 for tests and the bench: ``moto``'s server, in a process of
its own, behind a thin WSGI layer that counts requests and can make the store misbehave.

- ``python -m tests.objstore --port N`` serves it (``.ci/run`` starts one and exports
  ``TEST_S3_ENDPOINT``).
- The ``s3_endpoint`` fixture (session-scoped) uses ``TEST_S3_ENDPOINT`` when set, else starts
  one on a free port; it points the AWS SDKs and ``shared.store`` at it through the standard
  ``AWS_ENDPOINT_URL_S3`` variable (child processes inherit it) with test credentials.
- ``s3_bucket`` (module-scoped) makes a fresh bucket with boto3 and yields ``s3://<name>``.

The control paths (``/__store/...``: no bucket may be named so) are ours, not S3's:
``GET /__store/requests`` counts the S3 requests served since the last ``POST
/__store/reset``, by method; ``POST /__store/fault?status=503&code=SlowDown&seconds=S``
answers every S3 request with that error for S seconds (``seconds=0`` ends it).
``Endpoint.pause``/``resume`` (SIGSTOP/SIGCONT) give a store that accepts connections and never
answers: the client's timeouts. Killing the process is no outage test: moto keeps its objects
in memory, so a restarted store comes back empty.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

CONTROL = "/__store/"
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


# -- the server side ---------------------------------------------------------------------------


class Control:
    """Counts S3 requests and answers them with an injected error while a fault lasts."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.fault: tuple[int, str, float] | None = None  # status, code, until (monotonic)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL):
            return self._control(path[len(CONTROL):], environ, start_response)
        with self.lock:
            self.counts[environ.get("REQUEST_METHOD", "?")] += 1
            fault = self.fault if self.fault and self.fault[2] > time.monotonic() else None
        if fault:
            status, code, _ = fault
            body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>injected by tests.objstore</Message></Error>").encode()
            start_response(f"{status} Injected", [("Content-Type", "application/xml"),
                                                  ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)

    def _control(self, what: str, environ, start_response):
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        with self.lock:
            if what == "requests":
                answer = {"total": sum(self.counts.values()), "by_method": dict(self.counts)}
            elif what == "reset":
                self.counts.clear()
                answer = {"total": 0}
            elif what == "fault":
                seconds = float(query.get("seconds", "0"))
                self.fault = (int(query.get("status", "503")), query.get("code", "SlowDown"),
                              time.monotonic() + seconds) if seconds > 0 else None
                answer = {"fault": seconds}
            else:
                start_response("404 Not Found", [("Content-Length", "0")])
                return [b""]
        body = json.dumps(answer).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


def serve(host: str, port: int) -> None:
    """Serve moto's S3 (every service moto has, in fact) at ``host:port`` until a signal."""
    from moto.moto_server.werkzeug_app import (DomainDispatcherApplication, MotoRequestHandler,
                                               create_backend_app)
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = Control(DomainDispatcherApplication(create_backend_app))
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


# -- the client side ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Endpoint:
    """An S3 endpoint URL, and the process serving it when we started it."""

    url: str
    process: subprocess.Popen | None = None

    def _call(self, method: str, what: str, **query) -> dict:
        url = f"{self.url}{CONTROL}{what}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return json.loads(r.read())

    def requests(self) -> dict:
        """{"total": n, "by_method": {"GET": n, ...}}: S3 requests since the last reset."""
        return self._call("GET", "requests")

    def reset(self) -> None:
        self._call("POST", "reset")

    def fault(self, seconds: float, status: int = 503, code: str = "SlowDown") -> None:
        """Answer every S3 request with ``status``/``code`` for ``seconds`` (0 ends it)."""
        self._call("POST", "fault", seconds=seconds, status=status, code=code)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel and never answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        if self.process is None:
            raise RuntimeError("the endpoint was not started here (TEST_S3_ENDPOINT)")
        os.kill(self.process.pid, sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(port: int | None = None, timeout: float = 60) -> Endpoint:
    """Start ``python -m tests.objstore`` on ``port`` (a free one by default); return once it
    answers."""
    from harness.processes import REPO

    port = port or free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.objstore", "--port", str(port)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    endpoint = Endpoint(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + timeout
    while True:
        try:
            endpoint.requests()
            return endpoint
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                endpoint.stop()
                raise RuntimeError(f"the S3 test endpoint did not start on port {port}")
            time.sleep(0.05)


def client(endpoint: str):
    """A boto3 S3 client for ``endpoint`` with the test credentials."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def make_bucket(endpoint: str, prefix: str = "test") -> str:
    """A new, empty bucket; returns ``s3://<name>``."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}".lower().replace("_", "-")[:63]
    client(endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


def point_sdks_at(endpoint: str) -> dict:
    """Set the environment so that boto3, obstore and child processes reach ``endpoint`` with
    test credentials; returns the previous values to give back to ``restore_env``."""
    wanted = {**TEST_CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ALLOW_HTTP": "true"}
    previous = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    return previous


def restore_env(previous: dict) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _endpoint() -> Iterator[Endpoint]:
    given = os.environ.get("TEST_S3_ENDPOINT")
    endpoint = Endpoint(given.rstrip("/")) if given else start(RESERVED_PORT)
    previous = point_sdks_at(endpoint.url)
    try:
        yield endpoint
    finally:
        restore_env(previous)
        endpoint.stop()


def _reserve() -> int | None:
    """Under pytest, the endpoint's URL is fixed when this module is imported (at collection,
    before any test runs) and put in the environment then: the fork servers that
    ``tests.helpers.warm`` starts later inherit it, so a warm producer or model server reaches
    the store through the standard variable like a cold one. The server itself starts on that
    port when a test first asks for it."""
    if "pytest" not in sys.modules:
        return None
    given = os.environ.get("TEST_S3_ENDPOINT")
    port = None if given else free_port()
    point_sdks_at(given.rstrip("/") if given else f"http://127.0.0.1:{port}")
    return port


RESERVED_PORT = _reserve()


try:
    import pytest
except ImportError:  # run as the server: no pytest needed
    pytest = None

if pytest is not None:
    s3_endpoint = pytest.fixture(scope="session")(_endpoint)

    @pytest.fixture(scope="module")
    def s3_bucket(s3_endpoint: Endpoint) -> str:
        return make_bucket(s3_endpoint.url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests.objstore", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
