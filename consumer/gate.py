"""The promotion gate: a loaded version is checked before it answers anything, and refused if it
would serve badly. The live version keeps answering meanwhile, and after a refusal.

- A version written to our contract (it names a dataset) is scored on that dataset's evaluation
  split, as evaluate mode scores it. It is refused if a metric is NaN or infinite or, with
  ``max_regression`` R, if its loss is more than the fraction R above the live version's.
- Any version may be checked by a ``prepare`` step of the server (its warm-up requests): a
  failure there, or a NaN or infinite output, refuses it.
"""

from __future__ import annotations

import math
import time

from consumer import evaluate
from consumer.loader import Loaded


class Refused(Exception):
    """A version the gate will not promote, and why (one line)."""


def score(ready: Loaded) -> None:
    """``ready.metrics``: its evaluation on its own dataset, if it names one."""
    if ready.dataset is None:
        return
    started = time.perf_counter()
    try:
        ready.metrics = evaluate.evaluate(ready)
    except Exception as err:  # a version that cannot run its own data is not servable
        ready.metrics = {"error": f"{type(err).__name__}: {err}"[:500]}
    ready.phases["gate"] = ready.phases.get("gate", 0.0) + time.perf_counter() - started


def refusal(ready: Loaded, live: Loaded | None, max_regression: float | None) -> str | None:
    """Why the gate refuses ``ready`` (scored already), or None if it passes."""
    metrics = ready.metrics
    if metrics is None:
        return None
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
