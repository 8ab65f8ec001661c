"""What the consumer's loop (``consumer.loop``) is told and what it tells: its ``Config``, the
version ``Policy`` it follows, the ``Stats`` it returns and the ``VersionEvents`` it reports to.
Kept apart from the loop so that the loop's module holds the loop alone; ``consumer.loop``
re-exports every name here, so imports from there keep working."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from consumer import gate
from shared import layout

Policy = Callable[[list[layout.Version]], list[layout.Version]]  # wanted versions, newest first


def latest(count: int = 1) -> Policy:
    """The ``count`` newest versions (TF Serving's default policy, with ``count`` 1)."""
    return lambda listing: list(reversed(listing))[:count]


@dataclass(frozen=True)
class Config:
    export_dir: Path  # an export dir, or a TF Serving base path (source "base"); a RemoteBase
    #                   (s3://, gs://) only until a ServedModel or consumer.mirror.local_config
    #                   turns it into the local cache its mirror fills
    work_dir: Path
    source: str  # "savedmodel" or "checkpoint" in an export dir, or "base"
    mode: str  # loader.EVALUATE, loader.TRAIN or loader.SERVE
    train_steps: int = 100
    max_regression: float | None = None  # serve mode: refuse a loss this fraction above live
    warm_swap: bool = True  # restore a version of the live graph into its standby session
    until_step: int | None = None
    poll: float | None = None
    rescan: float = 5.0
    max_publish_failures: int = 3  # train mode: in a row, then the loop gives up
    regression_floor: float = gate.REGRESSION_FLOOR  # serve mode: see consumer.gate
    gate_dataset: dict | None = None  # serve mode: the data every candidate is scored on
    load_retries: int = 0  # a failed load is tried again this many times (model_server: 5)...
    load_retry_interval: float = 60.0  # ...this many seconds apart (consumer.retries)
    # an export dir on s3:// or gs:// (a ``consumer.remote_base.RemoteBase`` as export_dir):
    # the store is polled this often (TF Serving's --file_system_poll_wait_seconds: 0 polls
    # once, less never); its versions are copied into the work dir (consumer.mirror)
    store_poll: float = 1.0


@dataclass
class Stats:
    loaded: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    handoff_seconds: list[float] = field(default_factory=list)
    fatal: str | None = None  # why the loop gave up, in one line: the process exits 1


class VersionEvents(Protocol):
    """Told what happens to each version (serve mode: the server's status and metrics)."""

    def loading(self, step: int) -> None: ...

    def went_live(self, step: int) -> None: ...

    def refused(self, step: int, reason: str, cause: str) -> None: ...

    def unloaded(self, step: int) -> None: ...


def rss_mb() -> float | None:
    """Resident memory of this process, for watching it stay flat over reloads (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
