"""A new model config, applied to a running server: from ``--model_config_file`` (read again
when it changes, with ``--model_config_file_poll_wait_seconds`` > 0) or from gRPC's
``HandleReloadConfigRequest``. As in TF Serving the new config replaces the old one whole.

- Models added are loaded; models removed stop taking requests and are unloaded, each version
  after its last request; a model whose base path changed is replaced. Policies and labels
  change in place: a label moves in one step (one dict for another), so moving ``stable`` back
  to a version still loaded takes effect at once, warm, with no request failing.
- TF Serving's label rule holds: a label may only point at an available version. Two
  improvements: a label may also point at a version on disk that the new policy loads (it
  answers once that version is ready, so adding a version and its label takes one push, not
  two), and at start nothing has to be loaded yet for that; a request by such a label answers
  ``UNAVAILABLE`` (retryable) until the version is ready. A version the gate refused is never
  going to be available: a label at it is refused as TF Serving refuses it. With
  ``--allow_version_labels_for_unavailable_models``, a new (or unchanged) label may point at any
  version, as in TF Serving.
- A bad config is refused whole, with one line, and the running one stays. Reloads run one at
  a time, and none waits while holding anything a request needs.
- A config with no models takes no action: a config file caught empty while an editor rewrites
  it in place removes nothing (TF Serving: "Taking no action for empty config", server_core.cc
  ``ReloadConfig``). TF Serving says so only when no config is set at all, and applies an
  explicit empty ``model_config_list {}``, unloading every model; here that takes no action
  too (a difference the README lists: emptying a running server is rarely meant).
- A model whose base path changed keeps answering from its old path until the new one has a
  version available; a base path that does not exist keeps the model listed, its source
  logging the condition and looking again at each poll, and the others serving.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from consumer.serving import config
from consumer.serving.errors import ServingError
from consumer.serving.models import ModelSpec, Models, ServedModel, listing_of
from shared import logs

log = logs.get("consumer")

ADDED_MODEL_WAIT = 30.0  # seconds gRPC's reload waits for an added model's first version


class Reloader:
    def __init__(self, models: Models, make_model: Callable[[ModelSpec], ServedModel], *,
                 allow_unavailable_labels: bool = False) -> None:
        self.models = models
        self.make_model = make_model
        self.allow_unavailable_labels = allow_unavailable_labels
        self._lock = threading.Lock()  # one reload at a time
        self._moving: dict[str, ServedModel] = {}  # name -> its model at a new base path
        self.specs: list[ModelSpec] = []  # the config applied last (the repository's loads
        #                                   and unloads change it one model at a time)

    def check(self, specs: list[ModelSpec]) -> None:
        """Raise ``ServingError`` (FAILED_PRECONDITION, TF Serving's text) for a label that may
        not point where it does."""
        for spec in specs:
            if not spec.labels:  # nothing to check: no listing (on a bucket, a LIST a reload)
                continue
            model = self.models.get(spec.name)
            available = set(model.manager.steps()) if model is not None and \
                model.base_path == spec.base_path else set()
            old = model.labels if model is not None else {}
            listing = listing_of(spec.base_path, spec.source)
            if model is not None and model.base_path == spec.base_path:
                listing = model.loadable(listing)  # a refused version will never be available
            wanted = {v.step for v in spec.policy(listing)}
            for label, version in spec.labels.items():
                if version in available or version in wanted:
                    continue
                if self.allow_unavailable_labels and old.get(label, version) == version:
                    continue
                raise ServingError("FAILED_PRECONDITION",
                                   f"Request to assign label to version {version} of model "
                                   f"{spec.name}, which is not currently available for inference")

    def apply(self, specs: list[ModelSpec]) -> list[ServedModel]:
        """Make ``specs`` the server's models; returns the models added (or moved)."""
        if not specs:
            log.warning("config_empty", reason="a config with no models takes no action; the "
                                               "running models stay")
            return []
        with self._lock:
            self.check(specs)
            current = {model.name: model for model in self.models}
            wanted = {spec.name: spec for spec in specs}
            added, moved, changed = [], [], []
            for name, spec in wanted.items():
                model = current.get(name)
                pending = self._moving.get(name)
                if pending is not None and pending.base_path != spec.base_path:
                    self._moving.pop(name)
                    self._stop(pending)  # moved again, or back: that move is abandoned
                    pending = None
                if model is not None and model.base_path == spec.base_path:
                    model.update(spec.policy, spec.labels)
                    changed.append(name)
                elif pending is not None:
                    pending.update(spec.policy, spec.labels)
                    changed.append(name)
                elif model is not None:  # its base path moved: the old one serves meanwhile
                    moved.append(self.make_model(spec))
                else:
                    added.append(self.make_model(spec))
            removed = [model for name, model in current.items() if name not in wanted]
            self.specs = list(specs)
            for model in removed:
                self._remove(model)
                pending = self._moving.pop(model.name, None)
                if pending is not None:
                    self._stop(pending)
            for model in added:
                self.models.add(model)
                model.start()
            for model in moved:
                self._moving[model.name] = model
                model.start()
                threading.Thread(target=self._hand_over, args=(model,), name="move",
                                 daemon=True).start()
        log.info("config_reloaded", models=sorted(wanted), added=[m.name for m in added],
                 removed=[m.name for m in removed], updated=changed,
                 moved=[m.name for m in moved])
        return added + moved

    def _hand_over(self, new: ServedModel) -> None:
        """A moved model takes over its name once it has a version available; until then the
        old base path's versions answer."""
        while not new.stop.is_set():
            if new.wait_available(0.5):
                with self._lock:
                    if self._moving.get(new.name) is not new:
                        return  # abandoned by a later reload
                    del self._moving[new.name]
                    old = self.models.get(new.name)
                    self.models.add(new)  # one dict entry replaced: requests move at once
                if old is not None and old is not new:
                    self._stop(old)
                log.info("model_moved", model=new.name, base_path=str(new.base_path))
                return

    @staticmethod
    def _stop(model: ServedModel) -> None:
        threading.Thread(target=model.finish, kwargs={"timeout": 60}, name="unload",
                         daemon=True).start()

    def _remove(self, model: ServedModel) -> None:
        self.models.remove(model.name)  # new requests: NOT_FOUND; those in flight finish
        threading.Thread(target=self._finish_removed, args=(model,), name="unload",
                         daemon=True).start()

    def _finish_removed(self, model: ServedModel) -> None:
        """Unload a removed model, then drop its metrics series: after its unloads (their hooks
        touch its gauges), and only if no later reload has added it again."""
        model.finish(timeout=60)
        if model.metrics is not None and self.models.get(model.name) is None:
            model.metrics.forget_model(model.name)

    def load(self, spec: ModelSpec, wait: float = ADDED_MODEL_WAIT) -> bool:
        """The model repository's load: ``spec`` joins (or replaces its name's entry in) the
        config applied last; True once the model has a version available, within ``wait``."""
        with self._lock:
            specs = [s for s in self.specs if s.name != spec.name] + [spec]
        self.apply(specs)
        model = self._moving.get(spec.name) or self.models.get(spec.name)
        return model is not None and model.wait_available(wait)

    def unload(self, name: str) -> bool:
        """The model repository's unload: the model leaves the config applied last and stops
        taking requests; each version is unloaded after its last request. False if no model of
        that name is served. The last model may go too (``apply`` would take no action)."""
        with self._lock:
            model = self.models.get(name)
            if model is None:
                return False
            self.specs = [s for s in self.specs if s.name != name]
            self._remove(model)
            pending = self._moving.pop(name, None)
            if pending is not None:
                self._stop(pending)
        log.info("model_unloaded_on_request", model=name)
        return True

    def apply_request(self, message) -> None:
        """gRPC's HandleReloadConfigRequest: apply, then wait (a bounded while, holding nothing)
        for each added model's first version, as TF Serving waits for them."""
        try:
            specs = config.from_proto(message, "HandleReloadConfigRequest")
        except config.ConfigError as err:
            raise ServingError("INVALID_ARGUMENT", str(err)) from None
        added = self.apply(specs)
        absent = [m for m in added if not _is_dir(m.base_path)]
        if absent:  # nothing to wait for: the config stands, the model waits for its path
            raise ServingError("NOT_FOUND", "the config is applied, but the base path of " +
                               "; ".join(f"model {m.name} ({m.base_path}) does not exist"
                                         for m in absent) +
                               ": its versions are loaded once it does")
        missing = [m.name for m in added if not m.wait_available(ADDED_MODEL_WAIT)]
        if missing:
            raise ServingError("UNKNOWN", f"{len(missing)} model(s) did not become available: "
                                          f"{', '.join(missing)}")


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


class _Changed(FileSystemEventHandler):
    def __init__(self, path: Path, wake: threading.Event) -> None:
        self.path, self.wake = path, wake

    def on_any_event(self, event) -> None:
        if Path(getattr(event, "dest_path", "") or event.src_path) == self.path or \
                Path(event.src_path) == self.path:
            self.wake.set()


class ConfigFileWatcher:
    """``--model_config_file`` read again every ``poll`` seconds, and at once when inotify says
    it changed (an edit takes milliseconds, not a poll interval, to apply)."""

    def __init__(self, path: Path, poll: float, reloader: Reloader,
                 stop: threading.Event) -> None:
        self.path, self.poll, self.reloader, self.stop = Path(path).absolute(), poll, reloader, stop
        self._wake = threading.Event()
        self._text = self._read()
        self._observer = Observer()
        self._observer.schedule(_Changed(self.path, self._wake), str(self.path.parent))
        self._thread = threading.Thread(target=self._run, name="config", daemon=True)

    def _start_observer(self) -> None:
        try:
            self._observer.start()
        except OSError as err:  # inotify refused (the per-user limit): the poll alone reads it
            self._observer = None
            log.warning("watch_fallback_polling", path=str(self.path), reason=str(err),
                        poll_seconds=self.poll)

    def _read(self) -> str | None:
        """The file's text; None if it cannot be read now (gone between an editor's writes)."""
        try:
            return self.path.read_bytes().decode("utf-8", "surrogateescape")
        except OSError:
            return None

    def start(self) -> None:
        self._start_observer()
        self._thread.start()

    def _run(self) -> None:
        """Supervised: whatever a reload raises, the watcher logs it and goes on watching."""
        while not self.stop.is_set():
            self._wake.wait(self.poll)
            self._wake.clear()
            text = self._read()
            if text is None or text == self._text:
                continue
            self._text = text
            try:
                self._apply(text)
            except Exception as err:  # a defect of ours: this reload fails, the server goes on
                log.exception("config_refused", path=str(self.path),
                              error=f"{type(err).__name__}: {err}"[:500],
                              reason="the running config stays")

    def _apply(self, text: str) -> None:
        try:
            text.encode("utf-8")  # surrogates stand for bytes that are not UTF-8
            self.reloader.apply(config.parse(text, str(self.path)))
        except UnicodeEncodeError:
            log.error("config_refused", path=str(self.path), error="the file is not UTF-8 text",
                      reason="the running config stays")
        except (config.ConfigError, ServingError) as err:
            log.error("config_refused", path=str(self.path),
                      error=getattr(err, "message", None) or str(err),
                      reason="the running config stays")

    def close(self) -> None:
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        self._thread.join(timeout=5)
