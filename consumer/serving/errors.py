"""A request that cannot be answered: TF Serving's canonical code and its one-line message.

The calls raise ``ServingError``; each wire protocol maps the code as TF Serving's own front does:
REST through ``http_server.cc``'s table, gRPC by the same name (TF's codes are gRPC's).
"""

from __future__ import annotations

import re

# TF Serving's HTTP status for each canonical code (model_servers/http_server.cc).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}

# TF's error classes by the canonical code they carry (tf.errors.OpError.error_code is the same
# number as gRPC's and as error_codes.proto's).
CODE_NAMES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
              5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED",
              8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
              11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
              15: "DATA_LOSS", 16: "UNAUTHENTICATED"}


class ServingError(Exception):
    """A request's own failure: a canonical code (``INVALID_ARGUMENT``...) and its message.

    The message is always text both fronts can send: a client's bytes quoted in it that are not
    UTF-8 (kept by the JSON parser as surrogate escapes) are written ``\\xff``, as Python writes
    bytes, so a REST body stays valid UTF-8 JSON and gRPC can encode its details. TF Serving
    echoes them raw (``json_tensor.cc``, ``MakeJsonFromStatus``), which makes its body invalid."""

    def __init__(self, code: str, message: str) -> None:
        assert code in HTTP_STATUS, code
        message = printable(message)
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # it crosses from the parse process (consumer.serving.offload)
        return ServingError, (self.code, self.message)

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with every surrogate written out: a byte that was not UTF-8 (``\\udcff``, as
    ``surrogateescape`` keeps it) as ``\\xff``, any other as ``\\ud800``. Text without one is
    returned as it is (the common case costs one search)."""
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(_written, text)


def _written(match: re.Match) -> str:
    point = ord(match.group())
    return f"\\x{point - 0xDC00:02x}" if 0xDC80 <= point <= 0xDCFF else f"\\u{point:04x}"


def from_tf(error) -> ServingError:
    """A ``tf.errors.OpError`` from ``Session.run`` as TF Serving passes it on: same code and
    message, newlines kept (a client's bytes quoted in it stay as they were sent), less TF's
    trailing node annotations (``[[{{node x}}]]``)."""
    return ServingError(CODE_NAMES.get(error.error_code, "UNKNOWN"), _without_nodes(error.message))


def from_undecodable(error: UnicodeDecodeError) -> ServingError:
    """A TF error whose message is not UTF-8, which TF's Python binding cannot raise: it raises
    the ``UnicodeDecodeError`` instead, holding the message's bytes. TF quotes a request's own
    bytes in such a message (``Could not parse example input, value: '...'`` for a malformed
    ``tf.Example``, from ``example_proto_fast_parsing.cc``'s ``InvalidArgument``), so the request
    is at fault: ``INVALID_ARGUMENT``, with the bytes that are not UTF-8 written ``\\xff``."""
    raw = error.object if isinstance(error.object, bytes) else bytes(error.object)
    return ServingError("INVALID_ARGUMENT",
                        _without_nodes(raw.decode("utf-8", "surrogateescape")))


def _without_nodes(message: str) -> str:
    lines = str(message).rstrip().split("\n")
    while len(lines) > 1 and lines[-1].strip().startswith("[["):
        lines.pop()
    return "\n".join(lines).rstrip()[:1024]
