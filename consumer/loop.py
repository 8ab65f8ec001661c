"""The manager: decides which version is live. It loads the new one before it drops the old one,
then evaluates or trains the live version.

A version that fails to load is logged and skipped, and the live one stays live. A version
deleted while it was loading (retention) is not held against anyone: the next pass takes the
newest.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from consumer import evaluate, loader, train
from consumer.source import VersionSource
from shared import layout, logs

log = logs.get("consumer")


@dataclass(frozen=True)
class Config:
    export_dir: Path
    work_dir: Path
    source: str  # "savedmodel" or "checkpoint"
    mode: str  # loader.EVALUATE or loader.TRAIN
    train_steps: int = 100
    until_step: int | None = None
    poll: float | None = None
    rescan: float = 5.0


@dataclass
class Stats:
    loaded: list[int] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    handoff_seconds: list[float] = field(default_factory=list)


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
    def __init__(self, config: Config, stop: threading.Event) -> None:
        self.config = config
        self.stop = stop
        self.source = VersionSource(config.export_dir, config.source, poll=config.poll,
                                    rescan=config.rescan)
        config.work_dir.mkdir(parents=True, exist_ok=True)  # once, not per evaluation
        self.live: loader.Loaded | None = None
        self.failed: set[Path] = set()
        self.stats = Stats()

    def _wanted(self, version: layout.Version) -> bool:
        if version.path in self.failed:
            return False
        return self.live is None or version.step > self.live.version.step

    def run(self) -> Stats:
        # Everything alive now (TensorFlow's modules above all) lives as long as the process:
        # take it out of the collector's view, so the per-version collect below costs ~1 ms,
        # not ~130 ms.
        gc.freeze()
        try:
            while not self.stop.is_set():
                version = self.source.next_version(self._wanted, self.stop)
                if version is None or not self._swap_to(version):
                    continue
                try:
                    self._work()
                except Exception as err:  # the live version stays; the next one may do better
                    log.error("work_failed", step=version.step, mode=self.config.mode,
                              error=f"{type(err).__name__}: {err}"[:500])
                # A tf.Graph holds reference cycles, so a dropped version would wait for a full
                # collection that may not come for hundreds of loads. Collect here, after the
                # work and off the handoff's path, so memory stays flat.
                gc.collect()
                if self.config.until_step is not None and version.step >= self.config.until_step:
                    break
        finally:
            self.source.close()
            if self.live is not None:
                self.live.close()
        return self.stats

    def _swap_to(self, version: layout.Version) -> bool:
        """Load ``version``; only once it is ready does it replace the live one."""
        try:
            ready = loader.load(version, self.config.mode)
        except loader.LoadError as err:
            deleted = not version.exists()
            log.warning("load_failed", step=version.step, path=str(version.path), error=str(err),
                        deleted_while_loading=deleted)
            if not deleted:  # a vanished version is simply superseded; a broken one is skipped
                self.failed.add(version.path)
            self.stats.failed.append(str(version.path))
            return False
        handoff = max(0.0, time.time() - version.committed_at)
        previous, self.live = self.live, ready
        if previous is not None:
            previous.close()
        self.stats.loaded.append(version.step)
        self.stats.handoff_seconds.append(handoff)
        log.info("model_loaded", step=version.step, source=version.kind, path=str(version.path),
                 load_seconds=round(ready.load_seconds, 4), handoff_seconds=round(handoff, 4),
                 phases={k: round(v, 4) for k, v in ready.phases.items()},
                 replaced_step=previous.version.step if previous else None, rss_mb=_rss_mb())
        return True

    def _work(self) -> None:
        live = self.live
        if self.config.mode == loader.EVALUATE:
            metrics = evaluate.evaluate(live)
            evaluate.record(self.config.work_dir / "evaluations.jsonl", live, metrics)
            log.info("evaluated", step=live.version.step, source=live.version.kind, **metrics)
            return
        result = train.continue_training(live, self.config.train_steps, self.stop)
        if result is None:
            log.info("training_abandoned", step=live.version.step, reason="signal")
            return
        log.info("trained", **result)
        try:
            manifest = layout.read_manifest(self.config.export_dir) or {}
            checkpoint, savedmodel = train.publish(live, self.config.work_dir, result["end_step"],
                                                   manifest.get("model", live.dataset.name))
        except Exception as err:  # e.g. the source SavedModel was retired meanwhile
            log.warning("publish_failed", step=result["end_step"], error=f"{type(err).__name__}: {err}")
            return
        log.info("checkpoint_saved", step=result["end_step"], path=str(checkpoint))
        if savedmodel is not None:
            log.info("model_exported", step=result["end_step"], path=str(savedmodel))
