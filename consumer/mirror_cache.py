"""The local side of a mirror: the cache dir a model's loop reads as if it were its base path.

Each version arrives whole: ``shared.remote.fetch`` downloads it into a hidden staging dir and
renames it to its number in one step, so the unchanged local source (inotify) and loader never
see half of one. A version leaves by ``shared.commit.discard_dir``: hidden by a rename first,
then deleted. What is cached is kept in memory as the remote identity of each version's copy;
after a restart, a version already in the cache is adopted if its files' sizes match the
store's listing (a version is never rewritten in place here, so sizes suffice to tell a
finished copy of the same objects).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from shared import commit, layout
from shared.durable import TEMP_PREFIX

# errnos that mean the cache's disk (or quota) is full: a condition to wait out, not a defect
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_full(err: OSError) -> bool:
    return err.errno in FULL


class Cache:
    """The versions copied so far: ``<root>/<n>/`` (``versions_dir`` is ``root`` for a TF
    Serving base path, ``root/savedmodels`` for a producer's export dir)."""

    def __init__(self, versions_dir: Path) -> None:
        self.dir = Path(versions_dir)
        self.identities: dict[int, tuple] = {}  # step -> remote identity of its cached copy

    def prepare(self) -> list[Path]:
        """Make the dir; remove what a crash left (staging and discarded dirs); returns those."""
        self.dir.mkdir(parents=True, exist_ok=True)
        removed = []
        for entry in os.scandir(self.dir):
            if entry.name.startswith(TEMP_PREFIX):
                path = Path(entry.path)
                shutil.rmtree(path, ignore_errors=True) if entry.is_dir(follow_symlinks=False) \
                    else path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def steps(self) -> set[int]:
        """The versions in the cache dir now (as the local source lists them)."""
        return {v.step for v in layout.base_versions(self.dir)}

    def path(self, step: int) -> Path:
        return self.dir / str(step)

    def adopt(self, step: int, identity: tuple, sizes: dict[str, int]) -> bool:
        """Whether the copy of ``step`` found in the cache (from an earlier run) holds the files
        of ``sizes`` (relative path -> bytes) at those sizes; if so it counts as ``identity``."""
        root = self.path(step)
        for name, size in sizes.items():
            try:
                if (root / name).stat().st_size != size:
                    return False
            except OSError:
                return False
        self.identities[step] = identity
        return True

    def holds(self, step: int, identity: tuple) -> bool:
        return self.identities.get(step) == identity

    def staging(self, step: int) -> Path:
        """A hidden, not yet existing path for a copy of ``step`` that must not take its number
        yet (one already cached there: a version written again on the store)."""
        return self.dir / f"{TEMP_PREFIX}mirror-{step}-{os.getpid()}"

    def installed(self, step: int, identity: tuple, fetched: Path) -> None:
        """``fetched`` (a complete copy) becomes version ``step``: at its number already, or
        swapped in for the older copy there (which is hidden first, then deleted)."""
        final = self.path(step)
        if fetched != final:
            commit.discard_dir(final)
            os.rename(fetched, final)
        self.identities[step] = identity

    def evict(self, step: int) -> None:
        commit.discard_dir(self.path(step))
        self.identities.pop(step, None)

    def free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.dir).free
        except OSError:
            return None
