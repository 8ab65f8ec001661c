"""Durable writes on POSIX: fsync files and directories, and replace a file in one rename.

``shared.layout`` decides where versions go and what counts as committed; this module makes
sure that what it commits is on disk first.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

TEMP_PREFIX = ".tmp-"  # hidden: never a version, and removed by the next start's clean-up


def fsync_tree(path: Path) -> None:
    """Flush every file and directory below ``path`` (and ``path`` itself) to disk."""
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            _fsync_path(Path(dirpath) / name, os.O_RDONLY)
        fsync_dir(Path(dirpath))


def fsync_files(paths: list[Path]) -> None:
    for path in paths:
        _fsync_path(path, os.O_RDONLY)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries, so a rename in it survives a crash."""
    _fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes) -> float:
    """Replace ``path`` with ``data`` in one rename, after the bytes are on disk. Returns the
    time just after the rename: from then on, readers see the new content."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would lock out a reader of another user
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        visible_at = time.time()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return visible_at
