"""Evaluate a loaded version on its dataset's evaluation split.

From a SavedModel the split runs through the ``serve`` signature and is scored by the catalog,
as a server's clients would see it. From a checkpoint the training graph's ``metrics`` are used.
The two give the same figures for the same version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from consumer.loader import Loaded


def evaluate(loaded: Loaded) -> dict[str, float]:
    features, labels = loaded.dataset.eval_split
    if loaded.serving is not None:
        outputs = loaded.session.run(loaded.serving.output, {loaded.serving.features: features})
        return loaded.dataset.score(outputs, labels)
    training = loaded.training
    values = loaded.session.run(training.metrics, {training.features: features,
                                                   training.labels: labels})
    return {name: float(value) for name, value in values.items()}


def record(path: Path, loaded: Loaded, metrics: dict[str, float]) -> None:
    """Append one evaluation as a JSON line."""
    entry = {"step": loaded.version.step, "source": loaded.version.kind,
             "path": str(loaded.version.path), **metrics,
             "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
