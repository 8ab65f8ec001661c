"""Which versions that failed to load may be tried again, and when (TF Serving's load retries).

A failed load is one of three things, told apart by the version's files (``layout.tree_stamp``:
how many, how big, and the newest mtime or ctime among them):

- **Still being copied in**: its files changed while it loaded, or were written in the last
  ``SETTLE_SECONDS``. Not counted as an attempt: it is looked at every ``SETTLE_CHECK`` seconds
  and tried once its files have stopped changing. A copy that keeps mtimes (``cp -a``,
  ``rsync -a``) still sets ctimes, so it is recognized too.
- **Broken**: tried again ``retries`` times, ``interval`` seconds apart (TF Serving's
  ``--max_num_load_retries`` 5 and ``--load_retry_interval_micros`` 60 s), then refused.
- **Written anew**: a version whose files change after it failed (fixed in place, or a copy
  that paused longer than the settle time) is tried again at once, its count started afresh.

Only versions in a TF Serving base path are stamped: in our export dirs a version is renamed
into place whole, so its files never change after it is listed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared import layout

SETTLE_SECONDS = 2.0  # files written this recently may still be being copied in
SETTLE_CHECK = 0.5  # seconds between looks at a version still being copied in
RESTAMP_SECONDS = 5.0  # how often a version waiting out its back-off is checked for new files

STILL_WRITTEN, RETRY, FINAL = "still_written", "retry", "final"


@dataclass
class _Failure:
    attempts: int  # failed loads counted against the retries (a copy in progress is not)
    retry_at: float  # monotonic: when it may be tried again
    stamp: tuple | None  # its files' stamp when last looked at
    moving: bool  # still being copied in when it failed
    checked_at: float  # monotonic: when the stamp was last taken
    final: bool = False  # out of retries: refused until its files change


@dataclass(frozen=True)
class Outcome:
    kind: str  # STILL_WRITTEN, RETRY or FINAL
    attempt: int  # which failed attempt this was (1 for the first load)
    retry_in: float | None  # seconds until the next try (None: not before its files change)
    first: bool  # the first time this version is seen in this state: log it


class LoadRetries:
    def __init__(self, retries: int, interval: float) -> None:
        self.retries, self.interval = retries, interval
        self._failures: dict[tuple, _Failure] = {}

    def failed(self, version: layout.Version, before: tuple | None) -> Outcome:
        """Record a failed load of ``version``; ``before`` is its stamp when the load began
        (None for a version that cannot be in the middle of a copy)."""
        now = time.monotonic()
        stamp = _stamp(version) if before is not None else None
        old = self._failures.get(version.identity)
        moving = stamp is not None and (stamp != before or time.time() - stamp[2] < SETTLE_SECONDS)
        if moving:
            attempts = old.attempts if old is not None else 0
            self._failures[version.identity] = _Failure(attempts, now + SETTLE_CHECK, stamp, True,
                                                        now)
            return Outcome(STILL_WRITTEN, attempts + 1, SETTLE_CHECK,
                           first=old is None or not old.moving)
        attempts = (old.attempts if old is not None else 0) + 1
        final = attempts > self.retries
        self._failures[version.identity] = _Failure(attempts, now + self.interval, stamp, False,
                                                    now, final)
        return Outcome(FINAL if final else RETRY, attempts, None if final else self.interval,
                       first=True)

    def succeeded(self, version: layout.Version) -> None:
        self._failures.pop(version.identity, None)

    def blocked(self, version: layout.Version) -> bool:
        """Whether ``version`` must not be loaded now (waiting out a back-off or a copy)."""
        failure = self._failures.get(version.identity)
        if failure is None:
            return False
        now = time.monotonic()
        if failure.moving:
            if now < failure.retry_at:
                return True
            stamp = _stamp(version)
            settled = stamp == failure.stamp and time.time() - stamp[2] >= SETTLE_SECONDS
            failure.stamp, failure.checked_at = stamp, now
            failure.retry_at = now + SETTLE_CHECK
            if settled:
                failure.moving = False
                failure.retry_at = now  # its files have settled: try it now
            return not settled
        if not failure.final and now >= failure.retry_at:
            return False
        if failure.stamp is not None and now - failure.checked_at >= RESTAMP_SECONDS:
            failure.checked_at = now
            if _stamp(version) != failure.stamp:  # written anew: a new version, tried at once
                del self._failures[version.identity]
                return False
        return True

    def next_look(self) -> float | None:
        """The earliest monotonic time a blocked version may become loadable (None: none)."""
        times = [f.retry_at if not f.final else f.checked_at + RESTAMP_SECONDS
                 for f in self._failures.values() if not f.final or f.stamp is not None]
        return min(times, default=None)

    def forget_all_but(self, listed: set[tuple]) -> None:
        """Drop versions that left the listing: the table stays as small as the listing."""
        for identity in [i for i in self._failures if i not in listed]:
            del self._failures[identity]


def _stamp(version: layout.Version) -> tuple:
    return layout.tree_stamp(version.path)
