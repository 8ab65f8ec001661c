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
  candidate is measured against the last one that served, if that one is still on disk.
- Only a version that would replace the live one as the latest is compared with it: an older
  one kept by a policy, or rolled back to, replaces nothing. ``python -m consumer.decisions
  accept`` lets an operator take a refused version on purpose.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

from consumer import evaluate
from consumer.decisions import DECISIONS, Decisions, identity_key
from consumer.loader import Loaded
from shared import datasets, layout, logs

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
        self._gone_logged: str | None = None  # the served path last logged as gone

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

    def admit(self, ready: Loaded, live: Loaded | None,
              prepare: Callable[[Loaded], None] | None) -> str | None:
        """Why ``ready`` is refused, or None: its warm-up requests (``prepare``), then the check.
        Only a version that would replace ``live`` as the latest (a newer number, or the live
        one written anew) is compared with it. An older one, kept by a policy (``latest {2}``,
        ``specific``, ``all``) or rolled back to by a label, replaces nothing: it gets the checks
        that need no comparison (warm-up, NaN or infinite metrics), never the regression one."""
        try:
            if prepare is not None:
                started = time.perf_counter()
                prepare(ready)
                ready.phases["warm_up_requests"] = time.perf_counter() - started
        except Refused as refused:
            if not self.is_accepted(ready.version.identity):
                return str(refused)
        except Exception as err:  # its warm-up broke a limit (a MemoryError): the version's
            if not self.is_accepted(ready.version.identity):  # fault, not the server's
                return f"its warm-up failed: {type(err).__name__}: {err}"[:500]
        older = live is not None and ready.version.step < live.version.step
        return self.check(ready, live, compare=not older)

    def check(self, ready: Loaded, live: Loaded | None, compare: bool = True) -> str | None:
        """Score ``ready`` on the gate's data (if it follows our contract) and say why it is
        refused, or None. ``live`` is the live version (its data is the gate's); ``compare``
        False skips the regression check (``ready`` replaces nothing)."""
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
        reference = self._reference(ready, live, spec, data) \
            if self.max_regression is not None and compare else None
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

    def _reference(self, ready: Loaded, live: Loaded | None, spec: str, data) -> float | None:
        """The loss of the version ``ready`` would replace, on the same data."""
        if live is None:
            return self._served_reference(ready, spec)
        if live.serving is None:
            return None
        key = (live.version.identity, self._stamp)
        if key not in self._scores:
            self._remember(live, evaluate.evaluate(live, data).get("loss"))
        return self._scores[key]

    def _served_reference(self, ready: Loaded, spec: str) -> float | None:
        """With nothing live (the first candidate after a start), the loss of the version that
        served last, if it is still on disk. One that has left the disk can never serve again:
        measured against it, every remaining version could be refused and the model go dark
        with versions on disk. So the first candidate is then compared to nothing (warm-up and
        non-finite metrics still refuse it), and once live it is the reference."""
        served = self.decisions.served
        if not served or json.dumps(served["dataset"], sort_keys=True) != spec:
            return None
        if _listed(Path(served["path"]), ready):
            return served["loss"]
        if self._gone_logged != served["path"]:
            self._gone_logged = served["path"]
            log.warning("gate_reference_gone", step=served["step"], path=served["path"],
                        candidate_step=ready.version.step,
                        reason="the version that served last has left the disk and none is "
                               "live: the first candidate is not compared with its loss")
        return None

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


def _listed(path: Path, ready: Loaded) -> bool:
    """Whether ``path`` is a version in the listing ``ready`` comes from (True if the listing
    cannot be read now: a version is not taken as gone on a transient error)."""
    try:
        return any(v.path == path for v in layout.versions(ready.version.root,
                                                           ready.version.listing))
    except OSError:
        return True


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
