"""The manager: which loaded versions are available, and handles that keep a version alive while
it is in use (TF Serving's ``ServableHandle``).

A request takes a handle on one version when it starts and runs to its end on that version,
even if the version is unloaded meanwhile. Unloading only takes a version out of the manager's
map; its session goes back to its graph (to be the standby a newer version is restored into)
when its last handle is released, on whichever thread releases it. In evaluate and train modes
nobody else holds a handle, so a version closes as soon as it leaves the map.

"Latest" is the highest available version, as in TF Serving.
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
        self._holders = 1  # the manager's own hold, released when the version is unloaded
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
    """Holds the available versions; ``add`` and ``remove`` change them, ``handle`` lends one."""

    def __init__(self) -> None:
        self._versions: dict[int, Servable] = {}
        self._latest: Servable | None = None
        self._lock = threading.Lock()

    @property
    def live(self) -> Loaded | None:
        """The latest available version (the one a request that names none gets)."""
        latest = self._latest
        return latest.loaded if latest is not None else None

    def steps(self) -> list[int]:
        """The available versions, newest first."""
        with self._lock:
            return sorted(self._versions, reverse=True)

    def get(self, step: int) -> Loaded | None:
        servable = self._versions.get(step)
        return servable.loaded if servable is not None else None

    def add(self, ready: Loaded) -> None:
        """Make ``ready`` available (the latest, if it is the newest). A version already
        available under its step is replaced, and closes after its last request."""
        servable = Servable(ready)
        with self._lock:
            previous = self._versions.get(ready.version.step)
            self._versions[ready.version.step] = servable
            self._latest = self._versions[max(self._versions)]
        if previous is not None:
            previous.release()

    def remove(self, step: int) -> Loaded | None:
        """Take ``step`` out of service; it closes once its last request ends. Returns it (for
        its figures only: it may be closed already)."""
        with self._lock:
            servable = self._versions.pop(step, None)
            self._latest = self._versions[max(self._versions)] if self._versions else None
        if servable is None:
            return None
        servable.release()
        return servable.loaded

    def acquire(self, step: int | None = None) -> Servable | None:
        """Version ``step`` (the latest if None), held until its ``release``; None if there is
        no such version available. (``handle`` says the same as a ``with`` block.)"""
        with self._lock:
            servable = self._latest if step is None else self._versions.get(step)
            if servable is not None:
                servable._acquire()
        return servable

    @contextlib.contextmanager
    def handle(self, step: int | None = None) -> Iterator[Servable | None]:
        """Version ``step`` (the latest if None), kept open until the ``with`` block ends; None
        if there is no such version available."""
        servable = self.acquire(step)
        try:
            yield servable
        finally:
            if servable is not None:
                servable.release()

    def close(self) -> None:
        with self._lock:
            servables, self._versions, self._latest = list(self._versions.values()), {}, None
        for servable in servables:
            servable.release()
