"""The served models: each one's own loop (watch, load, gate) on its own thread, its manager,
its version labels, and the state of every version it knows, as TF Serving reports them.

A request names a model, and a version or a label or neither (the latest); ``Models.handle``
resolves that to one available version and holds it for the request's length, with TF Serving's
answers when it cannot: ``NOT_FOUND`` for an unknown model or version, ``INVALID_ARGUMENT`` for an
unknown label, ``UNAVAILABLE`` for a model with no version ready yet (TF Serving would not have
opened its port yet).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from consumer import mirror
from consumer.loader import Loaded
from consumer.loop import Config, Consumer, Policy, Stats, latest
from consumer.manager import Manager, Servable
from consumer.remote_base import RemoteBase, cache_dir
from consumer.serving.errors import ServingError, invalid, not_found
from shared import layout, logs

log = logs.get("consumer")

START, LOADING, AVAILABLE, END = "START", "LOADING", "AVAILABLE", "END"
MAX_ENDED = 100  # versions kept in the status after they ended (TF Serving keeps them all)

# What a version's failure reads as in its status: TF's error class, at the head of the message.
_ERROR_CODES = {"NotFoundError": "NOT_FOUND", "InvalidArgumentError": "INVALID_ARGUMENT",
                "DataLossError": "DATA_LOSS", "FailedPreconditionError": "FAILED_PRECONDITION",
                "OutOfRangeError": "OUT_OF_RANGE", "ResourceExhaustedError": "RESOURCE_EXHAUSTED",
                "UnimplementedError": "UNIMPLEMENTED", "PermissionDeniedError": "PERMISSION_DENIED",
                "InternalError": "INTERNAL"}


@dataclass
class ModelSpec:
    """One model to serve: its name (or how to learn it), where its versions are, and which."""

    name: str | Callable[[], str | None]
    base_path: Path | RemoteBase  # a RemoteBase (s3://, gs://) is mirrored into the work dir
    source: str = "base"  # "base": <base_path>/<n>/ (TF Serving); "savedmodel": an export dir
    policy: Policy = field(default_factory=latest)  # TF Serving's default: the newest one
    labels: dict[str, int] = field(default_factory=dict)


@dataclass
class VersionState:
    state: str
    error_code: str = "OK"
    error_message: str = ""


class ServedModel:
    """One model of the server: a ``Consumer`` loop over its base path, its manager and labels,
    and a status table the loop keeps up to date (it is the loop's ``VersionEvents``).

    A base path on an object store (``config.export_dir`` a ``RemoteBase``) gets a mirror
    (``consumer.mirror``) that copies the versions the policy wants into a cache dir under the
    model's work dir; the loop reads that dir as it would a local base path. The mirror asks
    this model which versions its loop uses (never evicted) and passed over (not wanted)."""

    def __init__(self, name: str | Callable[[], str | None], config: Config, *,
                 policy: Policy | None = None, prepare: Callable[[Loaded], None] | None = None,
                 labels: dict[str, int] | None = None, metrics=None, batcher=None) -> None:
        """``name`` may be a function: the name is then read when first asked for and known
        (``python -m consumer --mode serve`` names a model by its export.json, which the
        producer may not have written yet)."""
        self._name = name
        self.base_path = config.export_dir  # as configured: compared on reloads
        self.mirror: mirror.Mirror | None = None
        if isinstance(config.export_dir, RemoteBase):
            config = replace(config, export_dir=cache_dir(config.work_dir, config.export_dir))
        self.config = config
        self.manager = Manager()
        self.labels: dict[str, int] = dict(labels or {})
        self.metrics = metrics
        self.batcher = batcher  # told of each swap: the batch forming for the old version runs
        self.stop = threading.Event()
        self.states: dict[int, VersionState] = {}
        self._available = threading.Event()  # set once a first version is available
        self._lock = threading.Lock()
        self.consumer = Consumer(config, self.stop, self.manager, self, policy=policy,
                                 prepare=prepare)
        self.stats: Stats | None = None
        self.thread = threading.Thread(target=self._run, name="model", daemon=True)
        if isinstance(self.base_path, RemoteBase):
            self.mirror = mirror.Mirror(
                self.base_path, config.export_dir, config.source,
                mirror.loop_hooks(self.consumer, lambda: self.consumer.policy, self._loading),
                poll=config.store_poll, model=name if isinstance(name, str) else "")

    @property
    def name(self) -> str | None:
        if callable(self._name):
            found = self._name()
            if found is None:
                return None
            self._name = found
        return self._name

    def _run(self) -> None:
        """The model's loop, supervised: the loop restarts its own failed passes, and should it
        end on an error all the same, it is started again after a back-off. Only ``stop`` (or
        the loop's own end: ``--until-step``) ends it; its versions stay available throughout."""
        backoff = 1.0
        while True:
            try:
                self.stats = self.consumer.run()
                return
            except Exception as err:  # a defect of ours: logged with its cause, run again
                log.exception("model_loop_restarted", model=self.name or "",
                              error=f"{type(err).__name__}: {err}"[:500],
                              retry_in_seconds=backoff)
                self.stats = Stats(fatal=f"{type(err).__name__}: {err}")
            if self.stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)

    def start(self) -> None:
        self._expect(self.consumer.policy, self.labels)
        if self.mirror is not None:
            self.mirror.start()
        self.thread.start()

    def update(self, policy: Policy, labels: dict[str, int]) -> None:
        """A reloaded config's policy and labels, in place: the labels move at once (one dict
        replaced by another), and the loop reconciles the versions with the policy now."""
        self._expect(policy, labels)  # before the labels move: a request never finds neither
        self.consumer.policy = policy
        self.labels = dict(labels)
        self.consumer.source.wake()
        if self.mirror is not None:  # what it downloads and keeps follows the policy
            self.mirror.wake()

    def loadable(self, listing: list[layout.Version]) -> list[layout.Version]:
        """The versions of ``listing`` the loop may load: those the gate has not refused."""
        return [v for v in listing if not self.consumer.is_refused(v.identity)]

    def _expect(self, policy: Policy, labels: dict[str, int]) -> None:
        """Mark START (TF Serving's state for a version aspired to, not loading yet) each
        version a label points at that the policy is about to load: a request by that label
        then answers UNAVAILABLE (retryable) until it is ready, not NOT_FOUND (final). A START
        no label expects any more is dropped: that version is not coming."""
        with self._lock:
            idle = not labels and not any(v.state == START for v in self.states.values())
        if idle:
            return  # nothing to mark (and no listing to read: a bucket's costs a request)
        listing = self.listing()
        with self._lock:  # a refusal's END, set under this lock, lands after us or is seen
            wanted = {v.step for v in policy(self.loadable(listing))}
            coming = set(labels.values()) & wanted
            available = set(self.manager.steps())
            for step in [s for s, v in self.states.items() if v.state == START]:
                if step not in coming:
                    del self.states[step]
            for step in coming - available:
                state = self.states.get(step)
                if state is None or (state.state == END and state.error_code == "OK"):
                    self.states[step] = VersionState(START)

    def listing(self) -> list:
        """Its versions, oldest first: of its base path, or the complete ones its mirror last
        listed on the store (one listing now if it has not listed yet)."""
        if self.mirror is not None:
            if self.mirror.listing is not None:
                return self.mirror.candidates()
            return mirror.listing_once(self.base_path, self.config.source)
        return listing_of(self.base_path, self.config.source)

    def _loading(self) -> set[int]:
        with self._lock:
            return {s for s, v in self.states.items() if v.state == LOADING}

    def expected(self, step: int) -> bool:
        """Whether ``step`` is on its way to available (START or LOADING), not ended."""
        with self._lock:
            state = self.states.get(step)
        return state is not None and state.state in (START, LOADING)

    def wait_available(self, timeout: float) -> bool:
        """Whether a version became available within ``timeout`` (or its loop ended)."""
        deadline = time.monotonic() + timeout
        while not self.manager.steps() and self.thread.is_alive() and \
                time.monotonic() < deadline:
            self._available.wait(0.05)
        return bool(self.manager.steps())

    def finish(self, timeout: float | None = None) -> None:
        """Stop its loop (a load in progress completes first) and close its versions; each
        closes once its last request has ended."""
        self.stop.set()
        if self.mirror is not None:
            self.mirror.close()
        self.thread.join(timeout)
        self.consumer.close_versions()

    # -- VersionEvents: what the loop reports ------------------------------------------------

    def loading(self, step: int) -> None:
        self._set(step, VersionState(LOADING))

    def went_live(self, step: int) -> None:
        self._set(step, VersionState(AVAILABLE))
        self._available.set()
        if self.batcher is not None:  # a batch never mixes versions: the old one's runs now
            older = [self.manager.get(s) for s in self.manager.steps() if s != step]
            self.batcher.close_version({id(loaded) for loaded in older if loaded is not None})
        if self.metrics is not None:
            self.metrics.went_live(self.name or "", step, self.manager.steps())
        if self.mirror is not None:  # the version it replaces may leave the cache now
            self.mirror.wake()

    def refused(self, step: int, reason: str, cause: str) -> None:
        code = _ERROR_CODES.get(reason.split(":", 1)[0], "UNKNOWN") if cause == "load_failed" \
            else "NOT_FOUND" if cause == "deleted" else "FAILED_PRECONDITION"
        self._set(step, VersionState(END, code, reason))
        if self.metrics is not None:
            self.metrics.refused(self.name or "", cause)

    def unloaded(self, step: int) -> None:
        self._set(step, VersionState(END))
        if self.metrics is not None:
            self.metrics.unloaded(self.name or "", step, self.manager.steps())

    def _set(self, step: int, state: VersionState) -> None:
        with self._lock:
            if state.state in (LOADING, END) and step in self.manager.steps() and \
                    self.states.get(step, state).state == AVAILABLE:
                # a rewrite of an available version loads, or was refused: the old one answers
                # meanwhile, and the status says what answers (``unloaded`` comes after the
                # manager let go of it, so a version that ends still ends)
                return
            self.states[step] = state
            ended = sorted(s for s, v in self.states.items() if v.state == END)
            for old in ended[:-MAX_ENDED]:
                del self.states[old]

    def status(self) -> list[tuple[int, VersionState]]:
        """Every version it knows, newest first (TF Serving's order)."""
        with self._lock:
            return sorted(self.states.items(), reverse=True)

    # -- requests ----------------------------------------------------------------------------

    def resolve(self, version: int | None, label: str | None) -> int | None:
        """The version a request names: its number, its label's, or None for the latest."""
        if label is not None:
            if label not in self.labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            return self.labels[label]
        return version


class Models:
    """The server's models by name."""

    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}
        self._unnamed: list[ServedModel] = []
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[ServedModel]:
        with self._lock:
            return iter(list(self._models.values()) + list(self._unnamed))

    def get(self, name: str) -> ServedModel | None:
        model = self._models.get(name)
        if model is None and self._unnamed:  # a model whose name becomes known later
            with self._lock:
                for pending in list(self._unnamed):
                    if pending.name is not None:
                        self._unnamed.remove(pending)
                        self._models[pending.name] = pending
            model = self._models.get(name)
        return model

    def add(self, model: ServedModel) -> None:
        with self._lock:
            if model.name is None:
                self._unnamed.append(model)
            else:
                self._models[model.name] = model
        if model.name is not None and model.metrics is not None:
            model.metrics.serves(model.name)

    def remove(self, name: str) -> ServedModel | None:
        with self._lock:
            return self._models.pop(name, None)

    def known(self, name: str) -> ServedModel | None:
        """The model of this name, or None; UNAVAILABLE while a model's name is not known yet
        (it may be this one, once its export dir is claimed)."""
        model = self.get(name)
        if model is None and self._unnamed:
            raise _unavailable(name, None)
        return model

    def find(self, name: str, version: int | None = None, label: str | None = None) -> ServedModel:
        if not name:
            raise invalid("ModelSpec has no name specified.")
        model = self.known(name)
        if model is None:
            if label is not None:  # TF Serving looks the label up first
                raise invalid(f"Unrecognized servable version label: {label}")
            raise _unknown(name, version)
        return model

    def acquire(self, name: str, version: int | None = None,
                label: str | None = None) -> Servable:
        """The version a request names, held until its ``release``."""
        model = self.find(name, version, label)
        step = model.resolve(version, label)
        servable = model.manager.acquire(step)
        if servable is None:
            if label is not None and model.expected(step):
                # TF Serving never gets here (a label may only point at a version available);
                # a label we let point at a version on its way says so as retryable
                raise ServingError("UNAVAILABLE", f"version {step} of model {name}, which label "
                                                  f"{label} points at, is not ready yet")
            raise _unavailable(name, step)
        return servable

    @contextlib.contextmanager
    def handle(self, name: str, version: int | None = None,
               label: str | None = None) -> Iterator[Servable]:
        """The version a request names, held until the ``with`` block ends."""
        servable = self.acquire(name, version, label)
        try:
            yield servable
        finally:
            servable.release()


def listing_of(base_path: Path | RemoteBase, source: str) -> list:
    """The versions under ``base_path`` now; none if it cannot be read (its source logs that).
    On an object store: the complete versions of one listing."""
    if isinstance(base_path, RemoteBase):
        return mirror.listing_once(base_path, source)
    try:
        return layout.versions(base_path, source)
    except OSError:
        return []


def _unknown(name: str, step: int | None) -> ServingError:
    request = f"Specific({name}, {step})" if step is not None else f"Latest({name})"
    return not_found(f"Servable not found for request: {request}")


def _unavailable(name: str, step: int | None) -> ServingError:
    if step is not None:
        return _unknown(name, step)
    # TF Serving opens its ports only once its models' first versions are ready; we open them
    # at once, so a model with nothing available says so as a retryable UNAVAILABLE (503)
    return ServingError("UNAVAILABLE", f"no version of model {name} is ready yet")
