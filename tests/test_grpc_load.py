"""The gRPC bench's load generator (``bench/grpc_load.py``): h2load sending a prepared gRPC
frame to a real server. h2load reads no trailers, so a call the server refuses still counts as
"succeeded" there (HTTP 200, the gRPC status in the trailers); the bench counts the server's
own answers by code instead. Both are checked here: a good frame's calls are answered OK, and a
frame whose request is refused shows as not OK in the server's count though h2load saw no
failure."""

from __future__ import annotations

import re
import shutil

import pytest

from bench import grpc_load
from harness.rest_client import RestClient
from tests.test_grpc_front import _clean, _floats, _request, _serve

from tensorflow.core.framework import types_pb2  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None,
                                reason="h2load is missing: `make tools` installs it")


def _answered(rest_port: int) -> dict[str, float]:
    """gRPC predicts the server has answered, by code."""
    client = RestClient(rest_port)
    text = client.call("GET", "/monitoring/prometheus/metrics")[2].decode()
    client.close()
    counts: dict[str, float] = {}
    for labels, value in re.findall(r"^handoff_requests_total{([^}]*)} (\S+)$", text, re.M):
        if 'protocol="grpc"' in labels and 'endpoint="predict"' in labels:
            code = re.search(r'code="([^"]*)"', labels)[1]
            counts[code] = counts.get(code, 0.0) + float(value)
    return counts


def test_h2load_frames_reach_predict_and_refusals_are_counted_by_the_server(tmp_path):
    """The framing is gRPC's (a flag byte, a 4-byte big-endian length, the message: the
    PROTOCOL-HTTP2 document of grpc/grpc), so the server answers each call with y = 0.5x + 1;
    a refused request (DT_RESOURCE) is still "succeeded" for h2load and not OK for the
    server."""
    server, port, _, versions = _serve(tmp_path)
    rest = server.named("serving")[0]["port"]
    good = _request(_floats(1, values=[4.0])).SerializeToString()
    frame = grpc_load.grpc_frame(good)
    assert frame[:5] == b"\0" + len(good).to_bytes(4, "big")
    run = grpc_load.h2load(port, frame, streams=4, seconds=10, calls=200)
    assert run["requests"] == 200 and run["failed"] == 0, run
    assert _answered(rest) == {"OK": 200}
    bad = _request(_floats(1, dtype=types_pb2.DT_RESOURCE)).SerializeToString()
    run = grpc_load.h2load(port, grpc_load.grpc_frame(bad), streams=4, seconds=10, calls=20)
    assert run["requests"] == 20 and run["failed"] == 0, run  # h2load saw no failure
    assert _answered(rest) == {"OK": 200, "INVALID_ARGUMENT": 20}
    assert grpc_load._sample(port, good) == "y"  # a real client reads the answer whole
    versions.close()
    _clean(server)
