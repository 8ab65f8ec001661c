"""The consumer's loop: takes each new version from the source, loads it, and only once it is
ready (and, in serve mode, has passed the promotion gate) makes it live through the manager.
Then it evaluates or trains the live version; in serve mode the HTTP server answers from it.

A version that fails to load, or that the gate refuses, is logged and skipped, and the live one
stays live. A version deleted while it was loading (retention) is not held against anyone: the
next pass takes the newest.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from consumer import evaluate, loader, train
from consumer.manager import Manager
from consumer.source import VersionSource
from consumer.summaries import EvalSummaries
from shared import commit, layout, logs
from shared.publish import WRITE_ERRORS, PublishError, describe

log = logs.get("consumer")


@dataclass(frozen=True)
class Config:
    export_dir: Path
    work_dir: Path
    source: str  # "savedmodel" or "checkpoint"
    mode: str  # loader.EVALUATE, loader.TRAIN or loader.SERVE
    train_steps: int = 100
    max_regression: float | None = None  # serve mode: refuse a loss this fraction above live
    warm_swap: bool = True  # restore a version of the live graph into its standby session
    until_step: int | None = None
    poll: float | None = None
    rescan: float = 5.0
    max_publish_failures: int = 3  # train mode: in a row, then the loop gives up


class VersionEvents(Protocol):
    """Told of each version that goes live or is refused (serve mode: the server's metrics)."""

    def went_live(self, step: int) -> None: ...

    def refused(self, reason: str) -> None: ...


@dataclass
class Stats:
    loaded: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    handoff_seconds: list[float] = field(default_factory=list)
    fatal: str | None = None  # why the loop gave up, in one line: the process exits 1


def _rss_mb() -> float | None:
    """Resident memory of this process, for watching it stay flat over reloads (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class Consumer:
    def __init__(self, config: Config, stop: threading.Event, manager: Manager | None = None,
                 events: VersionEvents | None = None) -> None:
        """A ``manager`` passed in is shared (with an HTTP server) and closed by its owner."""
        self.config = config
        self.stop = stop
        self.source = VersionSource(config.export_dir, config.source, poll=config.poll,
                                    rescan=config.rescan)
        config.work_dir.mkdir(parents=True, exist_ok=True)  # once, not per evaluation
        self.manager = manager or Manager()
        self._owns_manager = manager is None
        self.events = events
        self.refused: set[Path] = set()  # broken or gated versions: never tried again
        self._refusal = ""  # why the last refused version was refused
        self.publish_failures = 0  # in a row, in train mode
        self.summaries = EvalSummaries(config.work_dir)
        self.stats = Stats()

    @property
    def live(self) -> loader.Loaded | None:
        return self.manager.live

    def _wanted(self, version: layout.Version) -> bool:
        if version.path in self.refused:
            return False
        return self.live is None or version.step > self.live.version.step

    def run(self) -> Stats:
        # Everything alive now (TensorFlow's modules above all) lives as long as the process:
        # take it out of the collector's view, so the per-version collect below costs ~1 ms,
        # not ~130 ms.
        gc.freeze()
        if self.config.mode == loader.TRAIN:  # it writes there, and holds the dir's lock
            self._clean_work_dir()
        try:
            while not self.stop.is_set():
                version = self.source.next_version(self._wanted, self.stop)
                if version is None:
                    continue
                swapped = self._swap_to(version)
                if self._refused_at_until_step(version):  # nothing newer is waited for
                    self.stats.fatal = (f"version {version.step} (--until-step "
                                        f"{self.config.until_step}) was refused: {self._refusal}")
                    break
                if swapped:
                    try:
                        self._work()
                    except Exception as err:  # the live version stays; the next may do better
                        log.error("work_failed", step=version.step, mode=self.config.mode,
                                  error=f"{type(err).__name__}: {err}"[:500])
                if self.stats.fatal is not None:
                    break
                # A tf.Graph holds reference cycles, so a dropped or refused version would wait
                # for a full collection that may not come for hundreds of loads. Collect here,
                # after the work and off the handoff's path, so memory stays flat.
                gc.collect()
                if (swapped and self.config.until_step is not None
                        and version.step >= self.config.until_step):
                    break
        finally:
            self.source.close()
            self.summaries.close()
            if self._owns_manager:
                last = self.live
                self.manager.close()
                if last is not None:
                    last.imported.retire()
        return self.stats

    def _clean_work_dir(self) -> None:
        """What a crash of an earlier run left half-written in the work dir (train mode publishes
        there), as the producer cleans its export dir at start."""
        removed = commit.clean_leftovers(self.config.work_dir)
        if removed:
            log.info("leftovers_removed", dir=str(self.config.work_dir), count=len(removed),
                     paths=[str(p) for p in removed])

    def _refused_at_until_step(self, version: layout.Version) -> bool:
        until = self.config.until_step
        return until is not None and version.step >= until and version.path in self.refused

    def _swap_to(self, version: layout.Version) -> bool:
        """Load ``version``; only once it is ready does it replace the live one."""
        live = self.live
        try:
            current = live.imported if live and self.config.warm_swap else None
            ready = loader.load(version, self.config.mode, current)
        except loader.LoadError as err:
            deleted = not version.still_committed()
            log.warning("load_failed", step=version.step, path=str(version.path), error=str(err),
                        deleted_while_loading=deleted)
            if not deleted:  # a vanished version is simply superseded; a broken one is skipped
                self.refused.add(version.path)
            self.stats.failed.append(str(version.path))
            self._refusal = str(err)
            self._count_refusal("load_failed")
            return False
        if self.config.mode == loader.SERVE and not self._promote(ready):
            return False
        previous = self.manager.swap(ready)  # released once its last request has ended
        ready_at = time.time()
        # not clamped at 0: a negative figure means the writer's clock is ahead (NFS), and says so
        handoff = ready_at - version.committed_at
        if previous is not None and previous.imported is not ready.imported:
            previous.imported.retire()  # a new graph: the old one's sessions close
        if self.events is not None:
            self.events.went_live(version.step)
        self.stats.loaded.append(version.step)
        self.stats.handoff_seconds.append(handoff)
        log.info("model_loaded", step=version.step, source=version.kind, path=str(version.path),
                 load=ready.load, ready_at=ready_at, load_seconds=round(ready.load_seconds, 4), handoff_seconds=round(handoff, 4),
                 phases={k: round(v, 4) for k, v in ready.phases.items()},
                 replaced_step=previous.version.step if previous else None, rss_mb=_rss_mb())
        return True

    def _promote(self, ready: loader.Loaded) -> bool:
        """Serve mode's gate: score ``ready`` on its evaluation split before it takes traffic.
        Refused: a metric that is NaN or infinite, or with ``max_regression`` R, a loss more than
        the fraction R above the live version's."""
        started = time.perf_counter()
        try:
            ready.metrics = evaluate.evaluate(ready)
        except Exception as err:  # a version that cannot run its own data is not servable
            ready.metrics = {"error": f"{type(err).__name__}: {err}"[:500]}
        ready.phases["gate"] = time.perf_counter() - started
        reason = _refusal(ready.metrics, self.live, self.config.max_regression)
        if reason is None:
            return True
        live = self.live
        log.warning("promotion_refused", step=ready.version.step, path=str(ready.version.path),
                    reason=reason, live_step=live.version.step if live else None,
                    live_loss=(live.metrics or {}).get("loss") if live else None, **ready.metrics)
        ready.close()
        if live is None or ready.imported is not live.imported:
            ready.imported.retire()  # a graph that never went live keeps no session
        self.refused.add(ready.version.path)
        self.stats.failed.append(str(ready.version.path))
        self._refusal = reason
        self._count_refusal("promotion_refused")
        return False

    def _count_refusal(self, reason: str) -> None:
        if self.events is not None:
            self.events.refused(reason)

    def _work(self) -> None:
        live = self.live
        if self.config.mode in (loader.EVALUATE, loader.SERVE):
            # serve mode scored the version at its gate already; evaluate mode scores it now
            metrics = live.metrics if live.metrics is not None else evaluate.evaluate(live)
            log.info("evaluated", step=live.version.step, source=live.version.kind, **metrics)
            self._record(live, metrics)
            return
        result = train.continue_training(live, self.config.train_steps, self.stop)
        if result is None:
            log.info("training_abandoned", step=live.version.step, reason="signal")
            return
        log.info("trained", **result)
        self._publish(live, result["end_step"])

    def _record(self, live: loader.Loaded, metrics: dict[str, float]) -> None:
        """evaluations.jsonl and the TensorBoard scalars; a failure (a full disk) is logged, and
        the evaluation stands in the log."""
        step = live.version.step
        try:
            evaluate.record(self.config.work_dir / "evaluations.jsonl", live, metrics)
        except OSError as err:
            log.warning("record_failed", step=step, error=describe(err))
        try:
            self.summaries.write(step, metrics)
        except WRITE_ERRORS as err:
            log.warning("record_failed", step=step, error=describe(err), to="tensorboard")

    def _publish(self, live: loader.Loaded, step: int) -> None:
        """Train mode's versions, into the work dir. A failure is logged and the next version
        tries again; after ``max_publish_failures`` in a row the loop gives up."""
        try:
            manifest = layout.read_manifest(self.config.export_dir) or {}
            checkpoint, savedmodel = train.publish(live, self.config.work_dir, step,
                                                   manifest.get("model", live.dataset.name))
        except (PublishError, layout.LayoutError, OSError) as err:
            self.publish_failures += 1
            kind = err.kind if isinstance(err, PublishError) else "work_dir"
            reason = err.reason if isinstance(err, PublishError) else describe(err)
            log.error("publish_failed", step=step, kind=kind, error=reason,
                      failures_in_a_row=self.publish_failures)
            if self.publish_failures >= self.config.max_publish_failures:
                self.stats.fatal = (f"{self.publish_failures} publish failures in a row in "
                                    f"{self.config.work_dir}; the last: {reason}")
            return
        self.publish_failures = 0
        if checkpoint is not None:  # None: this step was published before (a restart)
            log.info("checkpoint_saved", step=step, path=str(checkpoint))
        if savedmodel is not None:
            log.info("model_exported", step=step, path=str(savedmodel))


def _refusal(metrics: dict, live: loader.Loaded | None, max_regression: float | None) -> str | None:
    """Why the gate refuses a version with these ``metrics``, or None if it passes."""
    if "error" in metrics:
        return f"its evaluation failed: {metrics['error']}"
    bad = sorted(name for name, value in metrics.items() if not math.isfinite(value))
    if bad:
        return f"non-finite metrics: {', '.join(f'{n}={metrics[n]}' for n in bad)}"
    if max_regression is None or live is None or not live.metrics or "loss" not in live.metrics:
        return None
    limit = live.metrics["loss"] * (1 + max_regression)
    if metrics["loss"] > limit:
        return (f"loss {metrics['loss']:.6g} is more than {max_regression:.0%} above the live "
                f"version's {live.metrics['loss']:.6g}")
    return None
