"""A request that cannot be answered: TF Serving's canonical code and its one-line message.

The calls raise ``ServingError``; each wire protocol maps the code as TF Serving's own front does:
REST through ``http_server.cc``'s table, gRPC by the same name (TF's codes are gRPC's).
"""

from __future__ import annotations

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
    """A request's own failure: a canonical code (``INVALID_ARGUMENT``...) and its message."""

    def __init__(self, code: str, message: str) -> None:
        assert code in HTTP_STATUS, code
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


def from_tf(error) -> ServingError:
    """A ``tf.errors.OpError`` from ``Session.run`` as TF Serving passes it on: same code, and
    the message without TF's node annotations (``[[{{node x}}]]``), on one line."""
    lines = [line for line in str(error.message).strip().splitlines()
             if line.strip() and not line.strip().startswith("[[")]
    return ServingError(CODE_NAMES.get(error.error_code, "UNKNOWN"),
                        " ".join(line.strip() for line in lines)[:1024])
