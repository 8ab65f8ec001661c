"""The producer's training loop: train, checkpoint every N steps, export every M, finish cleanly."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared import contract, datasets, layout, logs, models
from shared.publish import PublishError, Publisher
from shared.tfcompat import v1

log = logs.get("producer")


@dataclass(frozen=True)
class Config:
    model: str
    export_dir: Path
    steps: int
    checkpoint_every: int
    export_every: int
    keep_checkpoints: int
    keep_checkpoint_every_hours: float | None
    keep_exports: int
    seed: int
    log_every_epochs: int
    max_publish_failures: int = 3


class PublishGaveUp(Exception):
    """Publishing failed ``max_publish_failures`` times in a row, or at the end: exit 1."""


class Schedule:
    """Publishes a checkpoint every ``checkpoint_every`` steps and a SavedModel every
    ``export_every``. A publish that fails (a full disk) is logged and tried again at the next
    interval, while training goes on; after ``max_publish_failures`` in a row, or at the final
    publish, it gives up."""

    def __init__(self, publisher: Publisher, session, serving, config: Config) -> None:
        self.publisher, self.session, self.serving, self.config = publisher, session, serving, config
        self.failures = 0  # in a row

    def due(self, step: int) -> None:
        if step % self.config.checkpoint_every == 0:
            self._publish("checkpoint", step)
        if step % self.config.export_every == 0:
            self._publish("savedmodel", step)

    def final(self, step: int) -> None:
        """A checkpoint and a SavedModel of the last step, unless they exist already."""
        self._publish("checkpoint", step, final=True)
        self._publish("savedmodel", step, final=True)

    def _publish(self, kind: str, step: int, final: bool = False) -> None:
        started = time.perf_counter()
        try:
            if kind == "checkpoint":
                path = self.publisher.save_checkpoint(self.session, step)
            else:
                path = self.publisher.export_savedmodel(self.session, step, serving=self.serving)
        except PublishError as err:
            self.failures += 1
            log.error("publish_failed", step=step, kind=kind, error=err.reason,
                      failures_in_a_row=self.failures, final=final)
            if final or self.failures >= self.config.max_publish_failures:
                raise PublishGaveUp(f"{err}; {self.failures} publish failure(s) in a row"
                                    + (", at the final publish" if final else "")) from None
            return
        self.failures = 0
        if path is not None:  # None: published before (a resumed run's first or last step)
            log.info("checkpoint_saved" if kind == "checkpoint" else "model_exported",
                     step=step, path=str(path), seconds=round(time.perf_counter() - started, 4))


def run(config: Config, stop: threading.Event) -> int:
    """Train ``config.model`` until the global step reaches ``config.steps`` or ``stop`` is set.
    Ends with a checkpoint and an export of the last step. Returns the final global step.
    The export dir must be claimed for the model (``layout.claim``) by the caller."""
    spec = models.MODELS[config.model]
    dataset = datasets.load({"name": spec.dataset, "seed": config.seed})
    root = config.export_dir
    removed = layout.clean_leftovers(root)
    if removed:
        log.info("leftovers_removed", count=len(removed), paths=[str(p) for p in removed])

    graph = models.build_training_graph(spec, dataset, config.seed)
    model = contract.read_training(graph)  # we train through the contract, as any reader would
    publisher = Publisher(root, graph, keep_checkpoints=config.keep_checkpoints,
                          keep_checkpoint_every_hours=config.keep_checkpoint_every_hours,
                          keep_exports=config.keep_exports)
    with graph.as_default():
        summaries = v1.summary.merge_all()
        figures = {v.op.name.split("/")[-1]: v for v in v1.trainable_variables()
                   if v.shape.rank == 0}  # scalar parameters, such as slope and intercept
        writer = v1.summary.FileWriter(str(layout.events_dir(root)), graph)

    def serving(assets_dir: Path) -> models.ServingGraph:
        return models.build_serving_graph(spec, dataset, assets_dir)

    with v1.Session(graph=graph) as session:
        publish = Schedule(publisher, session, serving, config)
        step = publisher.restore_latest(session)
        if step is None:
            session.run(v1.global_variables_initializer())
            step = 0
            log.info("training_started", model=spec.name, step=0, target_step=config.steps,
                     dataset=dataset.name, export_dir=str(root))
        else:
            log.info("training_resumed", model=spec.name, step=step, target_step=config.steps,
                     export_dir=str(root))

        epoch_metrics: list[dict] = []
        while step < config.steps and not stop.is_set():
            features, labels = dataset.batch(step)
            feed = {model.features: features, model.labels: labels}
            metrics, _ = session.run([model.metrics, model.train_op], feed)
            step += 1
            epoch_metrics.append(metrics)
            if step % dataset.steps_per_epoch == 0:
                epoch = step // dataset.steps_per_epoch - 1
                if epoch % config.log_every_epochs == 0:
                    means = {k: float(np.mean([m[k] for m in epoch_metrics])) for k in metrics}
                    values = session.run(figures)
                    log.info("train_progress", step=step, epoch=epoch, **means,
                             **{k: float(v) for k, v in values.items()})
                    writer.add_summary(session.run(summaries, feed), step)
                epoch_metrics = []
            publish.due(step)

        reason = "signal" if stop.is_set() else "steps_reached"
        publish.final(step)
        writer.close()
    log.info("training_finished", step=step, reason=reason)
    return step
