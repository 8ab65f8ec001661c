"""The manager: which loaded version is live, and handles that keep a version alive while in use.

This is TF Serving's ``ServableHandle``: a request takes a handle on the live version when it
starts and runs to its end on that version, even if a newer one goes live meanwhile. A swap only
moves the live pointer; the old version's session closes when its last handle is released, on
whichever thread releases it. In evaluate and train modes nobody else holds a handle, so the
old version closes at the swap itself.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from consumer.loader import Loaded


class Servable:
    """One loaded version and a count of its holders: the manager, and each request in flight."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self._holders = 1  # the manager's own hold, released when the version is swapped out
        self._lock = threading.Lock()

    @property
    def step(self) -> int:
        return self.loaded.version.step

    def _acquire(self) -> None:
        with self._lock:
            if self._holders == 0:  # cannot happen while the manager's lock is held; a guard
                raise RuntimeError(f"version {self.step} is already closed")
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self.loaded.close()


class Manager:
    """Holds the live version; ``swap`` replaces it, ``handle`` lends it to one request."""

    def __init__(self) -> None:
        self._live: Servable | None = None
        self._lock = threading.Lock()

    @property
    def live(self) -> Loaded | None:
        live = self._live
        return live.loaded if live is not None else None

    def swap(self, ready: Loaded) -> Loaded | None:
        """Make ``ready`` live; the previous version closes once its last handle is released.
        Returns the previous version (for its figures only: it may be closed already)."""
        with self._lock:
            previous, self._live = self._live, Servable(ready)
        if previous is None:
            return None
        previous.release()
        return previous.loaded

    @contextlib.contextmanager
    def handle(self) -> Iterator[Servable | None]:
        """The live version, kept open until the ``with`` block ends; None before any is live."""
        with self._lock:
            servable = self._live
            if servable is not None:
                servable._acquire()
        try:
            yield servable
        finally:
            if servable is not None:
                servable.release()

    def close(self) -> None:
        with self._lock:
            live, self._live = self._live, None
        if live is not None:
            live.release()
