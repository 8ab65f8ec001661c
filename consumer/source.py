"""The source: reports the newest committed version in an export dir (TF Serving's Source).

Filesystem events only *wake* the reader. What counts as a version is always read back from the
directory through ``shared.layout``, so a coalesced or dropped event (inotify drops them when
its queue overflows) costs at most one rescan interval, never a version.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import (EVENT_TYPE_CLOSED, EVENT_TYPE_CREATED, EVENT_TYPE_DELETED,
                             EVENT_TYPE_MODIFIED,
                             EVENT_TYPE_MOVED, DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
                             FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent,
                             FileSystemEvent, FileSystemEventHandler)
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.inotify_c import InotifyFD
from watchdog.observers.polling import PollingEmitter

from shared import layout, logs

log = logs.get("consumer")

MISSING_DIR_POLL = 0.2  # seconds between looks for an export dir that does not exist yet
STOP_CHECK = 0.25  # a signal sets ``stop`` from the main thread; waits check it this often


# Events that can change what is committed. Opens and read-only closes are left out: reading
# the state file raises them, and a source woken by its own reads would spin.
_CHANGES = {EVENT_TYPE_CREATED, EVENT_TYPE_MOVED, EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED}

# What inotify is asked for at all: a commit is a rename, a creation, or (for a writer that
# rewrites the state file in place) a close after writing. Leaving out IN_MODIFY spares the
# observer the flood of events from every write of a version's data, which it would otherwise
# work through before reaching the commit: commit to callback went from 1.7 ms to 1.1 ms.
# Not for the polling observer: it diffs snapshots, and a state file renamed into place under a
# reused inode number shows there as modified, not created.
_EVENT_FILTER = [FileMovedEvent, DirMovedEvent, FileCreatedEvent, DirCreatedEvent,
                 FileDeletedEvent, DirDeletedEvent, FileClosedEvent]


class _WakeOnCommit(FileSystemEventHandler):
    """Runs on the observer thread: it only notes that something may have been committed, or
    that a directory it should watch has appeared."""

    def __init__(self, root: Path, kind: str, wake: threading.Event,
                 lost: queue.SimpleQueue) -> None:
        self.root, self.kind = root, kind
        self.wake = wake
        self.lost = lost  # watched directories deleted or moved away: their watches are dead

    def on_any_event(self, event: FileSystemEvent) -> None:
        watched = layout.watched_dirs(self.root, self.kind)
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            if Path(path) in watched:  # a watched directory came, went or was replaced
                if event.event_type in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED):
                    self.lost.put(Path(path))
                self.wake.set()
                return
            if (event.event_type in _CHANGES or event.event_type == EVENT_TYPE_DELETED) and \
                    layout.is_commit_path(self.root, path, self.kind):
                self.wake.set()  # a deletion too: a version that leaves may change what serves
                return


_inotify_lock = threading.Lock()


def _shared_inotify() -> InotifyFD:
    """The process's one inotify instance, for every model's source: the kernel allows each user
    128 instances (``fs.inotify.max_user_instances``), and a server of many models must not
    run out. OSError if the kernel refuses it (the caller polls instead)."""
    with _inotify_lock:
        return InotifyFD.get_instance()


class _Watches:
    """watchdog's emitters without its observer. An observer passes each event from its
    emitter's thread to a dispatcher thread that calls the handler; here the emitter's thread
    calls it (the handler only sets an event): one thread hop fewer between a commit and the
    loop, and one thread fewer to share the GIL with. Measured here over 40 commits, rename to
    handler went from 0.50 to 0.43 ms (median); the hop from inotify's reader thread to the
    emitter's stays, as watchdog has it."""

    def __init__(self, handler: _WakeOnCommit, poll: float | None) -> None:
        """With ``poll`` None, inotify (the process's shared instance): OSError if the kernel
        refuses it."""
        self.handler, self.poll = handler, poll
        self.kind = "PollingEmitter" if poll else "InotifyEmitter"
        self._fd = None if poll else _shared_inotify()
        self._emitters: list = []

    def put(self, item: tuple) -> None:
        """What an emitter calls with each event that passed its filter (EventQueue's put)."""
        self.handler.on_any_event(item[0])

    def schedule(self, path: Path) -> None:
        """Watch ``path`` (not its subdirectories); OSError if it is gone or inotify is full."""
        if self.poll:
            watch = ObservedWatch(str(path), recursive=False)
            emitter = PollingEmitter(self, watch, timeout=self.poll)
        else:
            watch = ObservedWatch(str(path), recursive=False, event_filter=_EVENT_FILTER)
            emitter = InotifyEmitter(self, watch, event_filter=_EVENT_FILTER, inotify_fd=self._fd)
        emitter.start()  # its watch is added here, before the thread runs
        self._emitters.append(emitter)

    def stop(self) -> None:
        """Stop this source's emitters (their watches leave the shared inotify instance)."""
        for emitter in self._emitters:
            emitter.stop()
        for emitter in self._emitters:
            emitter.join(timeout=5)


class VersionSource:
    """Reports the committed versions of one listing: ``checkpoint`` or ``savedmodel`` in an
    export dir, or ``base`` (a TF Serving base path). It watches only the directories whose
    entries can change that (``layout.watched_dirs``): at most three inotify watches however
    many versions come and go, and no walk of a new version's tree on the commit's path."""

    def __init__(self, root: Path, kind: str, *, poll: float | None = None,
                 rescan: float = 5.0) -> None:
        self.root = Path(root).absolute()
        self.kind = kind
        self.poll = poll
        self.rescan = rescan
        self._wake = threading.Event()
        self._observer = None
        self._watching: dict[Path, int] = {}  # directory -> the inode its watch was armed on
        self._lost: queue.SimpleQueue = queue.SimpleQueue()  # filled by the observer thread
        self._polling_since: str | None = None  # why inotify was refused: this source polls
        self._listing_error: str | None = None  # the listing's error, logged when it starts
        self._emptiness: str | None = None  # "missing", "empty" or "versions", as last logged
        self._wake_at: float | None = None  # monotonic time a back-off ends: look again then
        self.scans = 0  # how often the directory was read: an idle source barely reads it
        self.woken = 0  # of those, how many a filesystem event (or ``wake``) asked for

    def _arm(self) -> None:
        """Watch each directory that exists, on its current inode (a directory deleted and made
        again is a new inode, whose events the old watch never sees). Repeated until a pass adds
        nothing: a directory made just before its parent's watch went live raised no event, but
        the next pass sees it."""
        while self._arm_once():
            pass

    def _arm_once(self) -> bool:
        """One pass of ``_arm``; whether it added a watch."""
        inodes = {path: _inode(path) for path in layout.watched_dirs(self.root, self.kind)}
        lost = False
        while not self._lost.empty():  # deleted and made again: maybe under the same inode
            lost = self._lost.get() in self._watching or lost
        if self._observer is not None and (lost or any(
                self._watching.get(path) not in (None, inode) for path, inode in inodes.items())):
            log.warning("watch_rearmed", path=str(self.root),
                        reason="the export dir was deleted or replaced")
            self.close()
        if self._observer is None:
            if inodes[self.root] is None:
                return False
            self._observer = self._watches()
            log.info("watching", path=str(self.root), kind=self.kind,
                     observer=self._observer.kind, rescan_seconds=self.rescan)
        added = False
        for path, inode in inodes.items():
            if inode is not None and self._watching.get(path) != inode:
                try:
                    self._observer.schedule(path)
                except OSError as err:
                    # Gone since its stat (deleted mid-arm): drop the observer, so the next scan
                    # comes after MISSING_DIR_POLL and tries again. Refused by the kernel
                    # (inotify's watch limit): this source polls from now on, and says so.
                    if not isinstance(err, FileNotFoundError):
                        self._fall_back_to_polling(f"inotify refused a watch on {path}: {err}")
                    self.close()
                    return False
                self._watching[path] = inode
                added = True
        return added

    def _watches(self) -> _Watches:
        handler = _WakeOnCommit(self.root, self.kind, self._wake, self._lost)
        if not self.poll and self._polling_since is None:
            try:
                return _Watches(handler, None)
            except OSError as err:  # the per-user instance limit, or no inotify at all
                self._fall_back_to_polling(f"inotify refused: {err}")
        return _Watches(handler, self.poll or self._fallback_poll())

    def _fallback_poll(self) -> float:
        return min(self.rescan, 1.0)

    def _fall_back_to_polling(self, why: str) -> None:
        if self._polling_since is None:
            self._polling_since = why
            log.warning("watch_fallback_polling", path=str(self.root), reason=why,
                        poll_seconds=self._fallback_poll())

    def next_listing(self, work: Callable[[list[layout.Version]], bool],
                     stop: threading.Event) -> list[layout.Version] | None:
        """Block until the committed versions (oldest first) are a listing ``work`` has work
        in, and return it; None once ``stop`` is set. A listing that cannot be read is a
        condition, not an end: logged when it starts and when it clears, and read again at the
        next poll, while what was loaded stays."""
        while not stop.is_set():
            self._wake.clear()  # before the scan: a commit during the scan wakes the next wait
            listing = self._read()
            self.scans += 1  # counted once done: a test can tell what the scan could have seen
            if listing is not None and work(listing):
                return listing
            if self._wait(self._wait_seconds(listing is None), stop):
                self.woken += 1
        return None

    def _read(self) -> list[layout.Version] | None:
        """The listing, or None while it cannot be read (logged once per cause)."""
        try:
            self._arm()
            listing = layout.versions(self.root, self.kind)
        except OSError as err:
            error = f"{type(err).__name__}: {err}"
            if error != self._listing_error:
                log.error("filesystem_error", path=str(self.root), error=error,
                          reason="what is loaded stays; the path is read again at each poll")
            self._listing_error = error
            return None
        if self._listing_error is not None:
            log.info("filesystem_recovered", path=str(self.root), error=self._listing_error)
            self._listing_error = None
        self._note_emptiness(listing)
        return listing

    def _note_emptiness(self, listing: list[layout.Version]) -> None:
        """Say when the path is missing or holds no version, and when that changes: a server
        that answers 503 must say why in its log."""
        state = "versions" if listing else ("empty" if _inode(self.root) else "missing")
        if state == self._emptiness:
            return
        if state != "versions":
            log.warning("no_versions", path=str(self.root), kind=self.kind, state=state,
                        reason="the path does not exist" if state == "missing" else
                        "no version is committed there")
        elif self._emptiness is not None:
            log.info("versions_found", path=str(self.root), versions=len(listing))
        self._emptiness = state

    def _wait_seconds(self, failed: bool) -> float:
        seconds = self.rescan if self._observer and not failed else \
            (min(self.rescan, 1.0) if failed else MISSING_DIR_POLL)
        if self._wake_at is not None:
            seconds = max(0.0, min(seconds, self._wake_at - time.monotonic()))
            self._wake_at = None
        return seconds

    def wake_at(self, when: float) -> None:
        """Look again at ``when`` (monotonic) at the latest: a back-off ends then."""
        self._wake_at = when if self._wake_at is None else min(self._wake_at, when)

    def wake(self) -> None:
        """Read the listing again now (the policy changed: what is wanted may have too)."""
        self._wake.set()

    def _wait(self, seconds: float, stop: threading.Event) -> bool:
        """Wait out ``seconds``; True if woken before."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._wake.wait(min(left, STOP_CHECK)):
                return True
        return False

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None
        self._watching.clear()


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino if path.is_dir() else None
    except OSError:
        return None
