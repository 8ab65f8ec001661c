"""Every REST client is bounded in time and descriptors, through a real server and raw sockets:
silent connections, bodies that stop, idle connections past the descriptor limit, a client that
pipelines without reading, ``--rest_api_timeout_in_ms`` and CORS (``consumer.serving.http``,
``connections``, ``workers``)."""

from __future__ import annotations

import resource
import socket
import threading
import time

import grpc
import pytest

from harness.rest_client import RestClient
from tests import tfs_models
from tests.test_model_server import config_file, loaded
from tests.test_survival import Probe, start

BODY_STALLED = (b"POST /v1/models/hp2:predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
HALF_HEADERS = b"POST /v1/models/hp2:predict HTTP/1.1\r\nHost: x\r\nContent-Le"


class GrpcProbe:
    """Predicts on one model every 50 ms over gRPC and keeps every call that failed."""

    def __init__(self, port: int, model: str) -> None:
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
        from tensorflow.core.framework import tensor_pb2, types_pb2

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.request = predict_pb2.PredictRequest()
        self.request.model_spec.name = model
        self.request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT,
                                                                 float_val=[1.0]))
        self.failures: list = []
        self.answers = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.stub.Predict(self.request, timeout=10)
                self.answers += 1
            except grpc.RpcError as err:
                self.failures.append((err.code(), err.details()))

    def finish(self) -> list:
        self.stop.set()
        self.thread.join(timeout=30)
        self.channel.close()
        return self.failures


def _connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before it closed the connection, or None if it stayed open."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server: ``hp2`` (fast) and ``slow`` (~2 s a predict), a 1 s REST timeout, CORS on."""
    tmp = tmp_path_factory.mktemp("limits")
    fast, slow = tmp / "hp2", tmp / "slow"
    for base, spin in ((fast, 0), (slow, 320000)):  # 20,000 turns took 130 ms here
        base.mkdir()
        versions = tfs_models.HalfPlusTwo(spin=spin)
        tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
        versions.close()
    server, port, grpc_port = start(config_file(tmp / "models.config", {"hp2": fast,
                                                                        "slow": slow}),
                                    "--work_dir", tmp / "work", "--rest_api_timeout_in_ms=1000",
                                    "--rest_api_enable_cors_support")
    loaded(server, fast, 1)
    loaded(server, slow, 1)
    yield server, port, grpc_port
    assert server.terminate() == 0, server.stderr


def test_clients_that_go_silent_take_nothing_from_the_others(served):
    """The survival issue's row: 32 connections that sent their headers and one body byte took
    every in-flight place, and every REST and gRPC request got 503 for as long as they stayed.
    Now a request counts only once its body is in: 40 bodies that stop, 20 connections that
    send nothing and 10 that stop mid-headers cost the probes nothing. Each is then ended: a
    stopped body and half headers get 408 (HTTP's own Request Timeout), a silent connection is
    closed without a word."""
    server, port, grpc_port = served
    stalled = [_connect(port, BODY_STALLED) for _ in range(40)]
    silent = [_connect(port) for _ in range(20)]
    halves = [_connect(port, HALF_HEADERS) for _ in range(10)]
    rest, rpc = Probe(port, "hp2"), GrpcProbe(grpc_port, "hp2")
    time.sleep(3)
    assert rest.finish() == [] and rpc.finish() == []
    assert rest.answers >= 20 and rpc.answers >= 20, (rest.answers, rpc.answers)
    for sock in stalled:
        answer = _closed_within(sock, 10)  # BODY_TIMEOUT is 5 s from the last byte
        assert answer is not None and answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"paused over 5 s" in answer, answer
    for sock in halves:
        answer = _closed_within(sock, 10)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408 "), answer
    for sock in silent:
        assert _closed_within(sock, 5) == b""  # HEADER_TIMEOUT, long since past
    for sock in stalled + silent + halves:
        sock.close()


def test_a_request_past_the_rest_timeout_gets_504_and_the_others_go_on(served):
    """``--rest_api_timeout_in_ms``: TF Serving waits that long for a REST call and answers
    DEADLINE_EXCEEDED (504 in http_server.cc's table). The 2 s predict gets 504 at 1 s; the
    call cannot be stopped, so it runs on and a stand-in worker keeps the pool's capacity:
    the fast model answers meanwhile."""
    server, port, _ = served
    slow = RestClient(port)
    started = time.monotonic()
    status, _, body = slow.predict("slow", {"instances": [1.0]})
    took = time.monotonic() - started
    assert status == 504 and "--rest_api_timeout_in_ms=1000" in body["error"], (status, body)
    assert 0.9 < took < 1.8, took
    fast = RestClient(port)
    for _ in range(5):
        status, _, body = fast.predict("hp2", {"instances": [1.0]})
        assert status == 200 and body == {"predictions": [1.5]}
    slow.close()
    fast.close()


def test_cors_headers_and_preflight_as_tf_serving_answers_them(served):
    """``--rest_api_enable_cors_support``: http_rest_api_util.cc's headers on every /v1/ answer;
    OPTIONS with an http(s) Origin is 200 and empty, without one FAILED_PRECONDITION (400)."""
    _, port, _ = served
    client = RestClient(port)
    status, headers, _ = client.predict("hp2", {"instances": [1.0]})
    assert status == 200 and headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-methods"] == "POST, GET"
    assert headers["access-control-allow-headers"] == "Content-Type"
    client.close()
    sock = _connect(port, b"OPTIONS /v1/models/hp2:predict HTTP/1.1\r\nHost: x\r\n"
                          b"Origin: https://app.example\r\nConnection: close\r\n\r\n")
    answer = _closed_within(sock, 10)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"access-control-allow-origin: *" in answer
    sock = _connect(port, b"OPTIONS /v1/models/hp2:predict HTTP/1.1\r\nHost: x\r\n"
                          b"Connection: close\r\n\r\n")
    assert _closed_within(sock, 10).startswith(b"HTTP/1.1 400 ")


def test_a_client_that_pipelines_without_reading_is_not_read_either(served):
    """Pipelined requests are answered in order; one that sends without reading its answers
    stops being read once 16 wait (before, 60 MB of them took the server from 527 MB to 2.1 GB):
    its sends block, and the server's memory stays where it was, while others are answered."""
    server, port, _ = served
    request = b"GET /v1/models/hp2 HTTP/1.1\r\nHost: x\r\n\r\n"
    sock = _connect(port, request * 100)
    received, deadline = b"", time.monotonic() + 20
    while received.count(b"HTTP/1.1 200 ") < 100 and time.monotonic() < deadline:
        received += sock.recv(1 << 20)
    assert received.count(b"HTTP/1.1 200 ") == 100
    sock.close()

    rss = _rss_kb(server.popen.pid)
    greedy = _connect(port)
    greedy.setblocking(False)
    sent, chunk = 0, request * 4096  # 160 KB a send
    give_up, blocked_since = time.monotonic() + 10, None
    while sent < (200 << 20) and time.monotonic() < give_up:
        try:
            sent += greedy.send(chunk)
            blocked_since = None
        except BlockingIOError:  # the server stopped reading: once for a whole second, done
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 1.0:
                break
            time.sleep(0.05)
    assert sent < (20 << 20), sent  # the kernel's buffers, and 16 requests: not 200 MB
    probe = Probe(port, "hp2")
    time.sleep(1)
    assert probe.finish() == [] and probe.answers >= 5
    assert _rss_kb(server.popen.pid) - rss < 100_000
    greedy.close()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_idle_connections_past_the_descriptor_limit_are_shed_and_the_server_serves_on(
        tmp_path):
    """The survival issue's row: 1,100 connections that send nothing, against a limit of 1,024
    descriptors, took every one, then EMFILE ended the server. Now a reserve of the limit is
    kept for the models' own files: past it the least recently active connections are closed
    (``connections_shed``, once), a probe on a connection of its own is answered throughout,
    and a new version published meanwhile loads (its files need descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    base = tmp_path / "hp2"
    base.mkdir()
    versions = tfs_models.HalfPlusTwo()
    tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
    server, port, _ = start(f"--model_base_path={base}", "--model_name=hp2", "--work_dir",
                            tmp_path / "work")
    loaded(server, base, 1)
    resource.prlimit(server.popen.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    probe = Probe(port, "hp2")
    probe.wait_for_version("1")  # its connection opened before the flood
    try:
        idle = []
        for _ in range(1100):
            idle.append(_connect(port))
        shed = server.wait_for(lambda e: e["event"] == "connections_shed", timeout=10)
        assert shed["limit"] == 1024
        tfs_models.publish(base, 2, lambda p: versions.save(p, b=2.0))
        loaded(server, base, 2)
        probe.wait_for_version("2")
        closed = [i for i, sock in enumerate(idle) if _closed_within(sock, 0.001) is not None]
        assert len(closed) >= 1100 - 1024 + 64, len(closed)  # at least past the reserve
        assert closed[0] < 100, closed[:5]  # the oldest first
    finally:
        failures = probe.finish()
        versions.close()
        for sock in idle:
            sock.close()
    assert failures == []
    assert probe.versions == ["1", "2"], probe.versions
    assert server.terminate() == 0, server.stderr
