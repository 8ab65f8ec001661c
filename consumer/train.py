"""Continue training a loaded version through its contract, then publish it into the work dir."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from consumer.loader import Loaded
from shared import commit, durable
from shared.publish import Publisher


def continue_training(loaded: Loaded, steps: int, stop: threading.Event) -> dict | None:
    """Run ``steps`` training steps from the version's own global step, on its dataset's batches.

    Returns start_step, end_step and the mean of each metric over the steps run, or None if a
    signal cut the run short (nothing is published then).
    """
    model, session = loaded.training, loaded.session
    start = int(session.run(model.global_step))
    history = []
    for step in range(start, start + steps):
        if stop.is_set():
            return None
        features, labels = model.dataset.batch(step)
        metrics, _ = session.run([model.metrics, model.train_op],
                                 {model.features: features, model.labels: labels})
        history.append(metrics)
    means = {name: float(np.mean([m[name] for m in history])) for name in model.metrics}
    return {"start_step": start, "end_step": int(session.run(model.global_step)), **means}


def publish(loaded: Loaded, work_dir: Path, step: int,
            model: str) -> tuple[Path | None, Path | None]:
    """A checkpoint and a SavedModel of the trained session, by the same commit protocol as the
    producer. A SavedModel source lends its ``serve`` meta graph; a checkpoint has none to lend.
    The work dir is claimed for ``model`` here, when a version names it, not at start, when the
    export dir may not even exist yet."""
    commit.claim(work_dir, model)
    for relative in loaded.dataset.files:  # a file-backed dataset's data goes with its versions
        target, data = work_dir / relative, (loaded.version.root / relative).read_bytes()
        if not target.exists() or target.read_bytes() != data:  # as it is now, not as it was
            target.parent.mkdir(parents=True, exist_ok=True)
            durable.write_atomic(target, data)
    if loaded.imported.publisher is None:  # one per graph: each would add a Saver's ops to it
        loaded.imported.publisher = Publisher(work_dir, loaded.graph)
    publisher = loaded.imported.publisher
    checkpoint = publisher.save_checkpoint(loaded.session, step)
    serve_from = loaded.version.path if loaded.version.kind == "savedmodel" else None
    return checkpoint, publisher.export_savedmodel(loaded.session, step, serve_from=serve_from)
