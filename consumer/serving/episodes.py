"""A condition that repeats, such as connections shed or requests refused, logged as an episode:
once when it starts, with its figures, and once when it clears, with how many times it happened
and for how long; never once per occurrence, which a flood would turn into a flood of lines."""

from __future__ import annotations

import threading
import time

from shared import logs

log = logs.get("consumer")


class Episode:
    def __init__(self, started: str, cleared: str, quiet_after: float = 1.0) -> None:
        """``started`` and ``cleared``: the two events' names; the episode clears once it has
        not happened for ``quiet_after`` seconds (seen at the next ``quiet``)."""
        self.started, self.cleared, self.quiet_after = started, cleared, quiet_after
        self._lock = threading.Lock()
        self._since: float | None = None  # when the episode began; None: none under way
        self._last = 0.0
        self._count = 0

    def happened(self, count: int = 1, **figures) -> None:
        """It happened ``count`` times now; the first time in an episode logs ``started``."""
        now = time.monotonic()
        with self._lock:
            first = self._since is None
            if first:
                self._since, self._count = now, 0
            self._count += count
            self._last = now
        if first:
            log.warning(self.started, count=count, **figures)

    def quiet(self) -> None:
        """It did not happen now: an episode quiet for ``quiet_after`` seconds ends here."""
        if self._since is None:  # the common case, without the lock
            return
        now = time.monotonic()
        with self._lock:
            if self._since is None or now - self._last < self.quiet_after:
                return
            count, seconds, self._since = self._count, round(self._last - self._since, 3), None
        log.info(self.cleared, count=count, seconds=seconds)
