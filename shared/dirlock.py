"""One writer per directory: an exclusive ``flock`` on a lock file inside it, held for the life of
the process. The kernel drops it when the process ends, however it ends, so a kill -9 never
leaves a stale lock. On NFS, Linux maps ``flock`` to a byte-range lock that the server sees."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shared import layout


class DirLocked(Exception):
    """Another process holds the directory."""


_held: dict[Path, int] = {}  # directory -> the open fd that holds its lock


def hold(root: Path, holder: str) -> None:
    """Take ``root``'s lock for this process, or raise DirLocked naming who has it."""
    root = Path(root)
    if root.resolve() in _held:
        return
    path = root / layout.LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise DirLocked(f"{root} is in use by {owner}: one writer per directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder} pid {os.getpid()}".encode(), 0)
    _held[root.resolve()] = fd


def release(root: Path) -> None:
    fd = _held.pop(Path(root).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the last fd of the open file drops the flock
