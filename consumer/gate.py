"""The promotion gate: a loaded version is checked before it answers anything, and refused if it
would serve badly. The live version keeps answering meanwhile, and after a refusal.

- Any version may be checked by the server's ``prepare`` step (its warm-up requests): a failure
  there, or a NaN or infinite output, refuses it.
- A version written to our contract is scored on the gate's data: the dataset the operator
  names (``--gate-dataset``), else the live version's, else (the first after a start) the data
  the last version that served was scored on, else its own. The candidate and the version it
  would replace are scored on the same data: what a new version's export names changes nothing.
  A metric that is NaN or infinite refuses it, and so, with ``max_regression`` R, does a loss
  above ``reference + R * max(reference, floor)``: a version scored like the live one passes
  even when the live loss is 0, and a loss near 0 does not turn every later version away.
- Decisions last: each refusal, and the version that serves with its score, are recorded in
  ``<work-dir>/gate.json``. After a restart a refused version stays refused and the first
  candidate is measured against the last one that served. ``python -m consumer.decisions
  accept`` lets an operator take a refused version on purpose.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from consumer import evaluate
from consumer.decisions import DECISIONS, Decisions, identity_key
from consumer.loader import Loaded
from shared import datasets, logs

log = logs.get("consumer")

REGRESSION_FLOOR = 1e-3  # the smallest loss a regression is measured against


class Refused(Exception):
    """A version the gate will not promote, and why (one line)."""


class Gate:
    def __init__(self, work_dir: Path | None, max_regression: float | None = None,
                 floor: float = REGRESSION_FLOOR, dataset: dict | None = None) -> None:
        """``work_dir`` None keeps decisions in memory only (evaluate and train modes)."""
        self.max_regression, self.floor = max_regression, floor
        self.dataset_spec = dataset  # the operator's gate data, if named
        self.decisions = Decisions(Path(work_dir) / DECISIONS if work_dir else None)
        self._data: dict[tuple, datasets.Dataset] = {}  # (spec, its files) -> the dataset
        self._scores: dict[tuple, float] = {}  # (version identity, data) -> its loss
        self._stamp: tuple = ()  # the data of the check in progress

    # -- what was decided ---------------------------------------------------------------------

    def is_refused(self, identity: tuple) -> bool:
        key = identity_key(identity)
        return key in self.decisions.refused and key not in self.decisions.accepted

    def is_accepted(self, identity: tuple) -> bool:
        return identity_key(identity) in self.decisions.accepted

    def refuse(self, identity: tuple, step: int, reason: str) -> None:
        self.decisions.refused[identity_key(identity)] = {"step": step, "reason": reason}
        self.decisions.unaccept(identity_key(identity))
        self.decisions.save()

    def served(self, ready: Loaded) -> None:
        """``ready`` went live as the latest: it is what the next candidate is measured against
        after a restart."""
        spec = getattr(ready, "gate_data", None)
        if spec is None or not ready.metrics or "loss" not in ready.metrics:
            return
        self.decisions.set_served({"step": ready.version.step, "path": str(ready.version.path),
                                   "loss": ready.metrics["loss"], "dataset": json.loads(spec)})
        self.decisions.save()

    # -- the check --------------------------------------------------------------------------------

    def check(self, ready: Loaded, live: Loaded | None) -> str | None:
        """Score ``ready`` on the gate's data (if it follows our contract) and say why it is
        refused, or None. ``live`` is the version it would replace as the latest, if any."""
        if self.is_accepted(ready.version.identity):
            log.warning("gate_overridden", step=ready.version.step, path=str(ready.version.path),
                        reason="an operator accepted this version")
            return None
        if ready.serving is None and ready.training is None:
            return None  # not our contract: its warm-up requests were its check
        started = time.perf_counter()
        spec, data = self._data_for(ready, live)
        ready.gate_data = spec
        try:
            ready.metrics = evaluate.evaluate(ready, data)
        except Exception as err:  # a version that cannot run the gate's data is not servable
            ready.metrics = {"error": f"{type(err).__name__}: {err}"[:500]}
        # Scored only where a limit needs it; and the candidate's score is kept, for when it
        # is live and the next one is measured against it: one evaluation a swap, not two.
        reference = self._reference(live, spec, data) if self.max_regression is not None \
            else None
        if "loss" in ready.metrics:
            self._remember(ready, ready.metrics["loss"])
        ready.phases["gate"] = time.perf_counter() - started
        return self._reason(ready.metrics, reference)

    def _data_for(self, ready: Loaded, live: Loaded | None) -> tuple[str, datasets.Dataset]:
        if self.dataset_spec is not None:
            spec = self.dataset_spec
        elif live is not None and live.dataset is not None:
            spec = json.loads(live.dataset.to_json())
        elif live is None and self.decisions.served:
            spec = self.decisions.served["dataset"]
        else:
            spec = json.loads(ready.dataset.to_json())
        key = json.dumps(spec, sort_keys=True)
        root = (live if live is not None and live.dataset is not None else ready).version.root
        stamp = (key, _files_stamp(spec, root))  # a data file rewritten is new data
        if stamp not in self._data:
            self._data = {stamp: datasets.load(spec, root)}  # the latest only
        self._stamp = stamp
        return key, self._data[stamp]

    def _reference(self, live: Loaded | None, spec: str, data) -> float | None:
        """The loss of the version ``ready`` would replace, on the same data."""
        if live is None:
            served = self.decisions.served
            if served and json.dumps(served["dataset"], sort_keys=True) == spec:
                return served["loss"]
            return None
        if live.serving is None:
            return None
        key = (live.version.identity, self._stamp)
        if key not in self._scores:
            self._remember(live, evaluate.evaluate(live, data).get("loss"))
        return self._scores[key]

    def _remember(self, loaded: Loaded, loss: float | None) -> None:
        """Keep the scores of the last two versions scored on the current data only."""
        key = (loaded.version.identity, self._stamp)
        self._scores = {k: v for k, v in self._scores.items() if k[1] == self._stamp}
        self._scores.pop(key, None)
        self._scores[key] = loss
        while len(self._scores) > 2:
            del self._scores[next(iter(self._scores))]

    def _reason(self, metrics: dict, reference: float | None) -> str | None:
        if "error" in metrics:
            return f"its evaluation failed: {metrics['error']}"
        bad = sorted(name for name, value in metrics.items() if not math.isfinite(value))
        if bad:
            return f"non-finite metrics: {', '.join(f'{n}={metrics[n]}' for n in bad)}"
        if self.max_regression is None or reference is None or "loss" not in metrics:
            return None
        limit = reference + self.max_regression * max(reference, self.floor)
        if metrics["loss"] > limit:
            return (f"loss {metrics['loss']:.6g} on the gate's data is above the limit "
                    f"{limit:.6g} (the live version's {reference:.6g}, --max-regression "
                    f"{self.max_regression:g})")
        return None


def _files_stamp(spec: dict, root: Path) -> tuple:
    """Size and mtime of the file a spec reads (an npz), or () for generated data."""
    path = spec.get("path")
    if not path:
        return ()
    try:
        stat = (Path(root) / path).stat()
    except OSError:
        return ()
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino)
