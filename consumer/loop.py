"""The consumer's loop: keeps the versions its policy asks for loaded, through load, gate and
the manager, as TF Serving's aspired-versions manager does.

Each pass reads what is committed, and the policy (``latest(1)`` unless told otherwise) names
the versions it wants, newest first. Each one not loaded yet is loaded and, in serve mode,
passes the promotion gate before the manager makes it available: only then can it answer. A
version the gate refuses is never tried again (unless it is written anew). A version that fails
to load is tried again with back-off, a bounded number of times (TF Serving's
``--max_num_load_retries`` and ``--load_retry_interval_micros``), and again whenever its files
change; one still being copied in is tried once its files stop changing. What was available
stays available throughout. Versions the policy no longer wants are unloaded once one it wants
is available: a model never goes dark because its newest version is broken, or because its
files were deleted.

The loop is its own supervisor: an unexpected error in a pass is logged with its cause and the
pass is run again after a back-off; it never ends the loop, and never takes a version away.

Whenever the latest version changes, it is evaluated or trained on (evaluate and train modes).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Callable

from consumer import gate, loader
from consumer.loop_config import Config, Policy, Stats, VersionEvents, latest, rss_mb
from consumer.manager import Manager
from consumer.retries import FINAL, STILL_WRITTEN, LoadRetries
from consumer.source import VersionSource
from consumer.work import Worker
from shared import commit, layout, logs

log = logs.get("consumer")

__all__ = ["Config", "Consumer", "PASS_BACKOFF", "Policy", "Stats", "VersionEvents", "latest"]

PASS_BACKOFF = (0.5, 30.0)  # seconds before a failed pass runs again: first, and at most


class Consumer:
    def __init__(self, config: Config, stop: threading.Event, manager: Manager | None = None,
                 events: VersionEvents | None = None, *, policy: Policy | None = None,
                 prepare: Callable[[loader.Loaded], None] | None = None) -> None:
        """A ``manager`` passed in is shared (with a server) and closed by its owner.
        ``prepare`` runs on each loaded version before the gate (a server's warm-up requests);
        it raises ``gate.Refused`` to refuse it."""
        self.config = config
        self.stop = stop
        self.source = VersionSource(config.export_dir, config.source, poll=config.poll,
                                    rescan=config.rescan)
        try:
            config.work_dir.mkdir(parents=True, exist_ok=True)  # once, not per evaluation
        except OSError as err:  # a full or read-only disk: records fail, serving goes on
            log.warning("record_failed", path=str(config.work_dir), error=str(err))
        self.manager = manager or Manager()
        self._owns_manager = manager is None
        self.events = events
        self.policy = policy or latest(1)
        self.prepare = prepare
        self.refused: dict[tuple, str] = {}  # version identity -> why the gate refused it
        self.retries = LoadRetries(config.load_retries, config.load_retry_interval)
        serving = config.mode == loader.SERVE  # its decisions outlive the process
        self.gate = gate.Gate(config.work_dir if serving else None, config.max_regression,
                              config.regression_floor, config.gate_dataset)
        self.worker = Worker(config.mode, config.export_dir, config.work_dir,
                             config.train_steps, config.max_publish_failures, stop)
        self.stats = Stats()
        self._gone_logged: set[tuple] = set()
        self._noticed_at: float | None = None  # when the pass that loads a version began

    @property
    def live(self) -> loader.Loaded | None:
        return self.manager.live

    def run(self) -> Stats:
        # Everything alive now (TensorFlow's modules above all) lives as long as the process:
        # take it out of the collector's view, so the per-version collect below costs ~1 ms,
        # not ~130 ms.
        gc.freeze()
        if self.config.mode == loader.TRAIN:  # it writes there, and holds the dir's lock
            self._clean_work_dir()
        backoff = PASS_BACKOFF[0]
        try:
            while not self.stop.is_set() and self.stats.fatal is None:
                try:
                    if not self._pass():
                        break
                    backoff = PASS_BACKOFF[0]
                except Exception as err:  # a defect or a condition nobody foresaw: this pass
                    log.exception("loop_failed", path=str(self.config.export_dir),  # fails;
                                  error=f"{type(err).__name__}: {err}"[:500],  # the loop goes
                                  retry_in_seconds=backoff)  # on, the live version answers
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, PASS_BACKOFF[1])
        finally:
            self.source.close()
            self.worker.close()
            if self._owns_manager:
                self.close_versions()
        return self.stats

    def _pass(self) -> bool:
        """One pass: wait for work, do it; False once the loop should end."""
        listing = self.source.next_listing(self._has_work, self.stop)
        if listing is None:
            return False
        self._noticed_at = time.time()  # for model_loaded: where a handoff's time goes
        before = self._latest_identity()
        self._reconcile(listing)
        if self._latest_identity() not in (before, None):
            self._work()
        # A tf.Graph holds reference cycles, so a dropped or refused version would wait for a
        # full collection that may not come for hundreds of loads. Collect here, after the work
        # and off the handoff's path, so memory stays flat.
        gc.collect()
        return not self._reached_until_step()

    def close_versions(self) -> None:
        """Close every version and its graph (the owner of the manager calls this at the end)."""
        graphs = {id(v.imported): v.imported for v in map(self.manager.get, self.manager.steps())}
        self.manager.close()
        for graph in graphs.values():
            graph.retire()

    # -- which versions ---------------------------------------------------------------------

    def wanted(self, listing: list[layout.Version]) -> list[layout.Version]:
        """What the policy asks for among the versions not refused, newest first."""
        return self.policy([v for v in listing if not self.is_refused(v.identity)
                            and not self.retries.blocked(v)])

    def is_refused(self, identity: tuple) -> bool:
        """Whether the gate refused this version (in this run, or in gate.json: a refusal
        outlives a restart) and no operator accepted it since."""
        return identity in self.refused or self.gate.is_refused(identity)

    def _has_work(self, listing: list[layout.Version]) -> bool:
        if self.gate.decisions.reload():  # an operator accepted a refused version
            for identity in [i for i in self.refused if self.gate.is_accepted(i)]:
                del self.refused[identity]
        listed = {v.identity for v in listing}
        self.retries.forget_all_but(listed)
        wanted = self.wanted(listing)
        self._warn_if_live_is_gone(listed)
        look = self.retries.next_look()
        if look is not None:  # a back-off ends, or a copy may have settled: look again then
            self.source.wake_at(look)
        return bool(self._to_load(wanted) or self._to_unload(wanted))

    def _to_load(self, wanted: list[layout.Version]) -> list[layout.Version]:
        loaded = {step: self.manager.get(step) for step in self.manager.steps()}
        return [v for v in wanted
                if loaded.get(v.step) is None or loaded[v.step].version.identity != v.identity]

    def _to_unload(self, wanted: list[layout.Version]) -> list[int]:
        """Available versions the policy no longer wants, once one it wants is available."""
        available = set(self.manager.steps())
        steps = {v.step for v in wanted}
        return sorted(available - steps) if available & steps else []

    def _reconcile(self, listing: list[layout.Version]) -> None:
        for version in self._to_load(self.wanted(listing)):
            if self.stop.is_set() or self.stats.fatal is not None:
                return
            try:
                self._load(version)
            except Exception as err:  # anything a version can make go wrong: it alone fails
                log.exception("load_crashed", step=version.step, path=str(version.path),
                              error=f"{type(err).__name__}: {err}"[:500])
                self._load_failed(version, f"{type(err).__name__}: {err}"[:500], None)
        listed = {v.identity for v in listing}
        for step in self._to_unload(self.wanted(listing)):
            gone = self.manager.get(step).version.identity not in listed
            self._unload(step, "its files are gone" if gone else "the policy no longer wants it")

    def _warn_if_live_is_gone(self, listed: set) -> None:
        live = self.live
        if live is not None and live.version.identity not in listed and \
                live.version.identity not in self._gone_logged:
            self._gone_logged.add(live.version.identity)
            log.warning("live_version_gone", step=live.version.step, path=str(live.version.path),
                        reason="its files left the listing and no version there could replace it; "
                               "it answers from memory until one can")

    # -- one version ------------------------------------------------------------------------

    def _load(self, version: layout.Version) -> bool:
        """Load, gate and make ``version`` available; False if it was refused."""
        if self.events is not None:
            self.events.loading(version.step)
        live = self.live
        stamp = layout.tree_stamp(version.path) if version.in_base else None
        try:
            current = live.imported if live is not None and self.config.warm_swap else None
            ready = loader.load(version, self.config.mode, current)
        except loader.LoadError as err:
            self._load_failed(version, str(err), stamp)
            return False
        self.retries.succeeded(version)
        if self.config.mode == loader.SERVE:
            reason = self.gate.admit(ready, live, self.prepare)
            if reason is not None:
                self._promotion_refused(ready, live, reason)
                return False
        previous = self.live
        self.manager.add(ready)
        ready_at = time.time()
        # not clamped at 0: a negative figure means the writer's clock is ahead (NFS), and says so
        handoff = ready_at - version.committed_at
        replaced = previous if previous is not None and previous is not self.live else None
        if self.config.mode == loader.SERVE and self.live is ready:
            self.gate.served(ready)  # what the next candidate is measured against, restarts too
        if replaced is not None and replaced.version.step == version.step:
            # the same number written anew: the manager swapped it in place
            if not self._graph_in_use(replaced.imported):
                replaced.imported.retire()
        if self.events is not None:
            self.events.went_live(version.step)
        self.stats.loaded.append(version.step)
        self.stats.handoff_seconds.append(handoff)
        log.info("model_loaded", step=version.step, source=version.kind, path=str(version.path),
                 load=ready.load, ready_at=ready_at, noticed_at=self._noticed_at,
                 load_seconds=round(ready.load_seconds, 4),
                 handoff_seconds=round(handoff, 4),
                 phases={k: round(v, 4) for k, v in ready.phases.items()},
                 replaced_step=replaced.version.step if replaced else None, rss_mb=rss_mb())
        if self.config.mode != loader.SERVE and replaced is not None and \
                replaced.version.step != version.step:
            self._unload(replaced.version.step, "superseded")  # one version at a time here
        return True

    def _load_failed(self, version: layout.Version, error: str, stamp: tuple | None) -> None:
        """A failed load: a vanished version is superseded, one still being copied in is tried
        once its files settle, a broken one again after a back-off (``consumer.retries``)."""
        try:
            deleted = not version.still_committed()
        except OSError:  # the listing cannot be read now: the version is taken as still there
            deleted = False
        self.stats.failed.append(str(version.path))
        if deleted:
            if self.events is not None:  # its status must not stay LOADING
                self.events.refused(version.step, "its files were deleted while it loaded",
                                    "deleted")
            log.warning("load_failed", step=version.step, path=str(version.path), error=error,
                        deleted_while_loading=True)
            return
        outcome = self.retries.failed(version, stamp)
        if outcome.kind == STILL_WRITTEN:
            if outcome.first:
                log.info("version_incomplete", step=version.step, path=str(version.path),
                         error=error, reason="its files are still being written; it is tried "
                                             "again once they stop changing")
            return
        if outcome.kind == FINAL:
            self._refuse(version, error, "load_failed")  # before the event: a reader of the
        log.warning("load_failed", step=version.step, path=str(version.path),  # event finds
                    error=error, deleted_while_loading=False,  # the status it says
                    attempt=outcome.attempt,
                    retries=self.config.load_retries, final=outcome.kind == FINAL,
                    retry_in_seconds=outcome.retry_in)

    def _promotion_refused(self, ready: loader.Loaded, live: loader.Loaded | None,
                           reason: str) -> None:
        ready.close()
        if not self._graph_in_use(ready.imported):
            ready.imported.retire()  # a graph that never went live keeps no session
        self._refuse(ready.version, reason, "promotion_refused")
        self.stats.failed.append(str(ready.version.path))
        log.warning("promotion_refused", step=ready.version.step, path=str(ready.version.path),
                    reason=reason, live_step=live.version.step if live else None,
                    live_loss=(live.metrics or {}).get("loss") if live else None,
                    **(ready.metrics or {}))

    def _refuse(self, version: layout.Version, reason: str, cause: str) -> None:
        """Refuse ``version``: the gate's refusals for good (kept in gate.json), a load out of
        retries until its files change (``self.retries`` keeps it out)."""
        if cause == "promotion_refused":
            self.refused[version.identity] = reason
            if self.config.mode == loader.SERVE:
                self.gate.refuse(version.identity, version.step, reason)
        if self.events is not None:
            self.events.refused(version.step, reason, cause)
        until = self.config.until_step
        live = self.live
        if until is not None and version.step >= until and (live is None
                                                            or live.version.step < until):
            # nothing newer is waited for: the run ends here
            self.stats.fatal = (f"version {version.step} (--until-step {until}) was refused: "
                                f"{reason}")

    def _unload(self, step: int, reason: str) -> None:
        old = self.manager.remove(step)  # closes once its last request has ended
        if old is None:
            return
        if not self._graph_in_use(old.imported):
            old.imported.retire()  # its sessions close as they come free
        if self.events is not None:
            self.events.unloaded(step)
        if self.config.mode == loader.SERVE:
            log.info("model_unloaded", step=step, path=str(old.version.path), reason=reason)

    def _graph_in_use(self, graph) -> bool:
        return any(self.manager.get(s).imported is graph for s in self.manager.steps())

    # -- the work on the latest version -----------------------------------------------------

    def _latest_identity(self) -> tuple | None:
        live = self.live
        return live.version.identity if live is not None else None

    def _work(self) -> None:
        live = self.live
        try:
            self.worker.run(live)
        except Exception as err:  # the live version stays; the next may do better
            log.error("work_failed", step=live.version.step, mode=self.config.mode,
                      error=f"{type(err).__name__}: {err}"[:500])
        if self.worker.fatal is not None:
            self.stats.fatal = self.worker.fatal

    def _reached_until_step(self) -> bool:
        live, until = self.live, self.config.until_step
        return until is not None and live is not None and live.version.step >= until

    def _clean_work_dir(self) -> None:
        """What a crash of an earlier run left half-written in the work dir (train mode publishes
        there), as the producer cleans its export dir at start."""
        removed = commit.clean_leftovers(self.config.work_dir)
        if removed:
            log.info("leftovers_removed", dir=str(self.config.work_dir), count=len(removed),
                     paths=[str(p) for p in removed])
