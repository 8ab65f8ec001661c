"""The producer's training loop: train, checkpoint every N steps, export every M, finish cleanly."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from shared import commit, contract, datasets, layout, logs, models
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
    remote: str | None = None  # a bucket URL each SavedModel is uploaded to (producer.upload)
    upload_timeout: float = 60.0  # seconds the final upload may take


def dataset_for(config: Config):
    return datasets.load({"name": models.MODELS[config.model].dataset, "seed": config.seed})


def clean(root: Path) -> None:
    """What a crash left half-written, before anything is published."""
    removed = commit.clean_leftovers(root)
    if removed:
        log.info("leftovers_removed", count=len(removed), paths=[str(p) for p in removed])


def publisher_for(config: Config, graph) -> Publisher:
    return Publisher(config.export_dir, graph, keep_checkpoints=config.keep_checkpoints,
                     keep_checkpoint_every_hours=config.keep_checkpoint_every_hours,
                     keep_exports=config.keep_exports)


def serving_for(config: Config) -> Callable[[Path], models.ServingGraph]:
    """Builds the ``serve`` tag's graph, fresh and without devices, for each SavedModel."""
    spec, dataset = models.MODELS[config.model], dataset_for(config)
    return lambda assets_dir: models.build_serving_graph(spec, dataset, assets_dir)


def log_start(config: Config, restored: int | None, **fields) -> int:
    """``training_started`` at step 0, or ``training_resumed`` at the restored step."""
    step = 0 if restored is None else restored
    log.info("training_started" if restored is None else "training_resumed", model=config.model,
             step=step, target_step=config.steps, export_dir=str(config.export_dir), **fields)
    return step


class PublishGaveUp(Exception):
    """Publishing failed ``max_publish_failures`` times in a row, or at the end: exit 1."""


class Schedule:
    """Publishes a checkpoint each time the global step crosses a multiple of
    ``checkpoint_every`` and a SavedModel each time it crosses one of ``export_every`` (alone,
    the step passes each multiple; in a cluster, other workers may carry it past one). A publish
    that fails (a full disk) is logged and tried again at the next crossing, while training goes
    on; after ``max_publish_failures`` in a row, or at the final publish, it gives up."""

    def __init__(self, publisher: Publisher, session, serving, config: Config,
                 start: int) -> None:
        self.publisher, self.session, self.serving, self.config = publisher, session, serving, config
        self.failures = 0  # in a row
        self.last = start  # the step of the last check
        self.uploader = None
        if config.remote:
            from producer import upload

            self.uploader = upload.Uploader(config.export_dir, config.remote, config.model,
                                            config.keep_exports).start()

    def due(self, step: int) -> None:
        last, self.last = self.last, step
        if step // self.config.checkpoint_every > last // self.config.checkpoint_every:
            self._publish("checkpoint", step)
        if step // self.config.export_every > last // self.config.export_every:
            self._publish("savedmodel", step)

    def final(self, step: int) -> None:
        """A checkpoint and a SavedModel of the last step, unless they exist already."""
        self._publish("checkpoint", step, final=True)
        self._publish("savedmodel", step, final=True)
        if self.uploader is not None and not self.uploader.finish(self.config.upload_timeout):
            last = self.uploader.last_error
            raise PublishGaveUp(f"the upload to {self.config.remote} did not finish within "
                                f"{self.config.upload_timeout:g} s"
                                + (f" (last error: {last})" if last else "")
                                + f"; every version is committed in {self.config.export_dir}, "
                                "and the next run uploads what the bucket lacks")

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
        if kind == "savedmodel" and self.uploader is not None:
            self.uploader.kick()  # also when published before: a resumed run's last upload
        if path is not None:  # None: published before (a resumed run's first or last step)
            log.info("checkpoint_saved" if kind == "checkpoint" else "model_exported",
                     step=step, path=str(path), seconds=round(time.perf_counter() - started, 4))


def run(config: Config, stop: threading.Event) -> int:
    """Train ``config.model`` until the global step reaches ``config.steps`` or ``stop`` is set.
    Ends with a checkpoint and an export of the last step. Returns the final global step.
    The export dir must be claimed for the model (``commit.claim``) by the caller."""
    spec, dataset = models.MODELS[config.model], dataset_for(config)
    root = config.export_dir
    clean(root)
    graph = models.build_training_graph(spec, dataset, config.seed)
    model = contract.read_training(graph)  # we train through the contract, as any reader would
    publisher = publisher_for(config, graph)
    with graph.as_default():
        summaries = v1.summary.merge_all()
        figures = {v.op.name.split("/")[-1]: v for v in v1.trainable_variables()
                   if v.shape.rank == 0}  # scalar parameters, such as slope and intercept
        writer = v1.summary.FileWriter(str(layout.events_dir(root)), graph)

    with v1.Session(graph=graph) as session:
        step = publisher.restore_latest(session)
        if step is None:
            session.run(v1.global_variables_initializer())
        step = log_start(config, step)
        publish = Schedule(publisher, session, serving_for(config), config, start=step)

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
