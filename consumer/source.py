"""The source: reports the newest committed version in an export dir (TF Serving's Source).

Filesystem events only *wake* the reader. What counts as a version is always read back from the
directory through ``shared.layout``, so a coalesced or dropped event (inotify drops them when
its queue overflows) costs at most one rescan interval, never a version.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import (EVENT_TYPE_CLOSED, EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED,
                             EVENT_TYPE_MOVED, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from shared import layout, logs

log = logs.get("consumer")

MISSING_DIR_POLL = 0.2  # seconds between looks for an export dir that does not exist yet
STOP_CHECK = 0.25  # a signal sets ``stop`` from the main thread; waits check it this often


# Events that can change what is committed. Opens and read-only closes are left out: reading
# the state file raises them, and a source woken by its own reads would spin.
_CHANGES = {EVENT_TYPE_CREATED, EVENT_TYPE_MOVED, EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED}


class _WakeOnCommit(FileSystemEventHandler):
    """Runs on the observer thread: it only notes that something may have been committed."""

    def __init__(self, root: Path, wake: threading.Event) -> None:
        self.root = root
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _CHANGES:
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if path and layout.is_commit_path(self.root, path):
                self.wake.set()
                return


class VersionSource:
    """Waits for the newest committed version of one kind (``checkpoint`` or ``savedmodel``)."""

    def __init__(self, root: Path, kind: str, *, poll: float | None = None,
                 rescan: float = 5.0) -> None:
        self.root = Path(root).absolute()
        self.kind = kind
        self.poll = poll
        self.rescan = rescan
        self._wake = threading.Event()
        self._observer = None
        self.scans = 0  # how often the directory was read: an idle source barely reads it

    def _start_observer(self) -> None:
        observer = PollingObserver(timeout=self.poll) if self.poll else Observer()
        observer.schedule(_WakeOnCommit(self.root, self._wake), str(self.root), recursive=True)
        observer.start()
        self._observer = observer
        log.info("watching", path=str(self.root), kind=self.kind,
                 observer=type(observer).__name__, rescan_seconds=self.rescan)

    def next_version(self, wanted: Callable[[layout.Version], bool],
                     stop: threading.Event) -> layout.Version | None:
        """Block until there is a version ``wanted`` accepts, and return the newest such one.
        Older ones are skipped, and so is a refused newer one. None once ``stop`` is set."""
        while not stop.is_set():
            if self._observer is None and self.root.is_dir():
                self._start_observer()
            self._wake.clear()  # before the scan: a commit during the scan wakes the next wait
            self.scans += 1
            candidates = [v for v in layout.versions(self.root, self.kind) if wanted(v)]
            if candidates:
                return candidates[-1]
            self._wait(self.rescan if self._observer else MISSING_DIR_POLL, stop)
        return None

    def _wait(self, seconds: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._wake.wait(min(left, STOP_CHECK)):
                return

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
