"""Admission: which requests the server takes on, both protocols together, before any work is
spent on them.

Requests are shed by how long they wait, not by how many there are, so that every client TF
Serving would queue and answer within its timeout is answered here too: 64 concurrent REST
clients got 877 503s in 2,000 requests under the old count of 32 in flight, though each would
have waited a few ms. The REST queue (``consumer.serving.workers``) refuses a request that has
waited ``max_wait`` (half the REST timeout: the other half is left for its run), and while its
queue stands that long, every new one at once.

What is left here is ``--max_inflight_requests``: the most requests *running* at once, both
protocols together (queued ones do not count, nor does a REST request before its body is read).
One past it waits for a place, at most ``max_wait``, then gets 503 / UNAVAILABLE. With the
default thread pools (2 REST, 4 gRPC) 32 is never reached; it bounds the model's concurrency
when the pools are made larger.

With batching the bound holds too, counted as the model runs: a batch takes one place, as one
``Session.run`` does without batching. The request that opens a batch keeps its place for the
batch until it is answered; one that joins a batch gives its place back (``give_back``) once it
is queued. So a batch fills up to ``max_batch_size`` whatever the bound (64 one-row requests
make one batch under the default 32, which counting each waiting request would forbid), and
the bound still bounds memory: each place holds one request being parsed or answered, or one
batch of at most ``max_batch_size`` rows, and the requests that joined it wait under their
queue's ``max_enqueued_batches``.
"""

from __future__ import annotations

import threading

from consumer.serving.errors import ServingError

DEFAULT_MAX_WAIT = 15.0  # seconds: half TF Serving's default REST timeout, 30 s
QUEUE_SHARE = 0.5  # of the REST timeout, the most a request may spend waiting to run

# The place this thread's request holds, if any: a request is parsed, run and answered on one
# thread (a REST worker, a gRPC handler), so the batcher can give back the place of the
# request it queues without being handed the Admission.
_held = threading.local()


def queue_bound(rest_timeout: float | None) -> float:
    """The most a request may wait to run, from ``--rest_api_timeout_in_ms`` (in seconds; None:
    no timeout, where TF Serving would queue it for good and we take the default's bound)."""
    return DEFAULT_MAX_WAIT if rest_timeout is None else rest_timeout * QUEUE_SHARE


class Admission:
    """Places for the requests running at once (see the module's docstring)."""

    def __init__(self, limit: int | None, max_wait: float = DEFAULT_MAX_WAIT) -> None:
        """``limit``: --max_inflight_requests, or None for no bound; ``max_wait``: the longest a
        request waits for a place (the REST front sets it from its timeout)."""
        self.limit, self.max_wait = limit, max_wait
        self._running = 0
        self._free = threading.Condition()

    def enter(self, timeout: float | None = None) -> None:
        """Take a place, waiting for one at most ``timeout`` seconds (``max_wait`` if None);
        UNAVAILABLE if none came free."""
        if self.limit is None:
            return
        wait = self.max_wait if timeout is None else max(0.0, timeout)
        with self._free:
            if not self._free.wait_for(self._has_room, wait):
                raise ServingError("UNAVAILABLE", f"{self.limit} requests are running, the limit "
                                                  "of --max_inflight_requests, and none ended "
                                                  f"within {wait * 1000:.0f} ms: try again")
            self._running += 1
        _held.admission = self

    def leave(self) -> None:
        """The place of this thread's request is free (none if it was given back)."""
        if self.limit is None or getattr(_held, "admission", None) is not self:
            return
        _held.admission = None
        with self._free:
            self._running -= 1
            self._free.notify()

    @property
    def running(self) -> int:
        return self._running

    def _has_room(self) -> bool:
        return self._running < self.limit


def give_back() -> None:
    """This thread's request joined a batch that holds a place already: its own is free now
    (and its ``leave`` will do nothing). Without a place held, nothing happens."""
    admission = getattr(_held, "admission", None)
    if admission is not None:
        admission.leave()
