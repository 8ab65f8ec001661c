"""What a mirror (``consumer.mirror``) asks of the loop that reads its cache, and how a version
on the store is shown to a version policy."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from consumer.remote_base import cache_dir
from shared import layout, remote

Policy = Callable[[list], list]  # as consumer.loop_config.Policy: newest first


@dataclass(frozen=True)
class Candidate:
    """A complete version on the store as a version policy sees it: ``step`` (and
    ``identity``, which no local refusal ever matches)."""

    step: int
    remote: remote.RemoteVersion

    @property
    def identity(self) -> tuple:
        """(path, stamp), as a local version's (``consumer.decisions.identity_key`` reads two):
        a path no local version has, so no refusal in gate.json matches it."""
        stamp = hashlib.sha256(repr(self.remote.identity).encode()).hexdigest()[:16]
        return (f"<store>/{self.step}", stamp)


@dataclass
class Hooks:
    """What the mirror asks its loop: its version policy now, the steps it uses (available,
    loading, in a load back-off: never evicted while listed), and the steps it passed over
    (refused, out of retries: kept cached, not wanted)."""

    policy: Callable[[], Policy]
    in_use: Callable[[], set[int]]
    passed_over: Callable[[], set[int]] = lambda: set()


def loop_hooks(consumer, policy: Callable[[], Policy],
               loading: Callable[[], set[int]] = lambda: set()) -> Hooks:
    """A mirror's ``Hooks`` on a ``consumer.loop.Consumer`` reading its cache dir: in use, the
    versions it has available and those ``loading``; passed over, the cached versions its gate
    refused or its load retries hold back (``Consumer.wanted`` leaves them out too)."""
    def in_use() -> set[int]:
        return set(consumer.manager.steps()) | loading()

    def passed_over() -> set[int]:
        cached = layout.versions(consumer.config.export_dir, consumer.config.source)
        return {v.step for v in cached
                if consumer.is_refused(v.identity) or consumer.retries.blocked(v)}

    return Hooks(policy, in_use, passed_over)


def local_config(config, work_dir: Path | None = None):
    """``config`` (a loop's ``Config``) with its RemoteBase export dir replaced by the local
    cache dir its mirror fills (under ``work_dir``, by default the config's own)."""
    # the cache is a local dir this process writes whole versions into: inotify sees them
    return replace(config, export_dir=cache_dir(work_dir or config.work_dir, config.export_dir),
                   poll=None)
