"""What the consumer does with each version that goes live: evaluate it (evaluate and serve
modes), or continue training it and publish the result into the work dir (train mode)."""

from __future__ import annotations

import threading
from pathlib import Path

from consumer import evaluate, loader, train
from consumer.summaries import EvalSummaries
from shared import layout, logs
from shared.publish import WRITE_ERRORS, PublishError, describe

log = logs.get("consumer")


class Worker:
    def __init__(self, mode: str, export_dir: Path, work_dir: Path, train_steps: int,
                 max_publish_failures: int, stop: threading.Event) -> None:
        self.mode, self.export_dir, self.work_dir = mode, export_dir, work_dir
        self.train_steps, self.max_publish_failures, self.stop = (
            train_steps, max_publish_failures, stop)
        self.summaries = EvalSummaries(work_dir)
        self.publish_failures = 0  # in a row, in train mode
        self.fatal: str | None = None  # why the consumer should give up, in one line

    def run(self, live: loader.Loaded) -> None:
        if self.mode in (loader.EVALUATE, loader.SERVE):
            # serve mode scored the version at its gate already; evaluate mode scores it now
            metrics = live.metrics if live.metrics is not None else (
                evaluate.evaluate(live) if self.mode == loader.EVALUATE else None)
            if metrics is None or "error" in metrics:  # no dataset to score it on
                return
            log.info("evaluated", step=live.version.step, source=live.version.kind, **metrics)
            self._record(live, metrics)
            return
        result = train.continue_training(live, self.train_steps, self.stop)
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
            evaluate.record(self.work_dir / "evaluations.jsonl", live, metrics)
        except OSError as err:
            log.warning("record_failed", step=step, error=describe(err))
        try:
            self.summaries.write(step, metrics)
        except WRITE_ERRORS as err:
            log.warning("record_failed", step=step, error=describe(err), to="tensorboard")

    def _publish(self, live: loader.Loaded, step: int) -> None:
        """Train mode's versions, into the work dir. A failure is logged and the next version
        tries again; after ``max_publish_failures`` in a row the consumer gives up."""
        try:
            manifest = layout.read_manifest(self.export_dir) or {}
            checkpoint, savedmodel = train.publish(live, self.work_dir, step,
                                                   manifest.get("model", live.dataset.name))
        except (PublishError, layout.LayoutError, OSError) as err:
            self.publish_failures += 1
            kind = err.kind if isinstance(err, PublishError) else "work_dir"
            reason = err.reason if isinstance(err, PublishError) else describe(err)
            log.error("publish_failed", step=step, kind=kind, error=reason,
                      failures_in_a_row=self.publish_failures)
            if self.publish_failures >= self.max_publish_failures:
                self.fatal = (f"{self.publish_failures} publish failures in a row in "
                              f"{self.work_dir}; the last: {reason}")
            return
        self.publish_failures = 0
        if checkpoint is not None:  # None: this step was published before (a restart)
            log.info("checkpoint_saved", step=step, path=str(checkpoint))
        if savedmodel is not None:
            log.info("model_exported", step=step, path=str(savedmodel))

    def close(self) -> None:
        self.summaries.close()
