"""Admission: which requests the server takes on, both protocols together, before any work is
spent on them."""

from __future__ import annotations

import threading

from consumer.serving.errors import ServingError


class Admission:
    """A bound on the requests in flight, both protocols together: past it a request is
    answered UNAVAILABLE (503) at once, rather than queued for seconds. With batching on, the
    batch queue's own bound (``max_enqueued_batches``) does this, and there is none here."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._in_flight = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        if self.limit is None:
            return
        with self._lock:
            if self._in_flight >= self.limit:
                raise ServingError("UNAVAILABLE", f"the server has {self.limit} requests in "
                                                  "flight, its limit (--max_inflight_requests): "
                                                  "try again")
            self._in_flight += 1

    def leave(self) -> None:
        if self.limit is None:
            return
        with self._lock:
            self._in_flight -= 1
