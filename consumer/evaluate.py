"""Evaluate a loaded version on its dataset's evaluation split.

From a SavedModel the split runs through the ``serve`` signature and is scored by the catalog,
as a server's clients would see it. From a checkpoint the training graph's ``metrics`` are used.
The two give the same figures for the same version.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

from consumer.loader import Loaded


def evaluate(loaded: Loaded, dataset=None) -> dict[str, float]:
    """Its metrics on ``dataset``'s evaluation split (its own dataset's if None). Another
    dataset is only for a SavedModel's ``serve`` graph (the gate scores two versions alike)."""
    dataset = dataset or loaded.dataset
    features, labels = dataset.eval_split
    if loaded.serving is not None:
        outputs = loaded.session.run(loaded.serving.output, {loaded.serving.features: features})
        return dataset.score(outputs, labels)
    training = loaded.training
    values = loaded.session.run(training.metrics, {training.features: features,
                                                   training.labels: labels})
    return {name: float(value) for name, value in values.items()}


def record(path: Path, loaded: Loaded, metrics: dict[str, float]) -> None:
    """Append one evaluation as a JSON line, whole or not at all: a write cut short (a full
    disk) is truncated away, so a reader of the file never meets a torn line."""
    entry = {"step": loaded.version.step, "source": loaded.version.kind,
             "path": str(loaded.version.path), **metrics,
             "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.fstat(fd).st_size
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, "short write", str(path))
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)
