"""The model server's calls, one set for every wire protocol: status, metadata, predict,
classify, regress and multi-inference, over the served models.

Each call resolves the model and version a request names and holds that version for the whole
run (``Models.handle``), so a swap never changes the version under a request, and the answer
names the version that gave it. Arrays in, arrays out: the REST front turns JSON into them and
the gRPC front protos. A failure is a ``ServingError`` with TF Serving's code and message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from consumer.serving import inference
from consumer.manager import Servable
from consumer.serving.errors import not_found
from consumer.serving.models import Models, VersionState


@dataclass(frozen=True)
class Target:
    """What a request names: a model, and a version or a label or neither (the latest)."""

    model: str
    version: int | None = None
    label: str | None = None


@dataclass
class Answer:
    """A call's result and who gave it: the version that ran, under which signature."""

    result: object
    version: int
    signature_name: str


class Calls:
    def __init__(self, models: Models, batcher=None, metrics=None) -> None:
        """With a ``batcher`` (``consumer.serving.batching``), every session run of a request is
        merged with concurrent ones; without, each request runs alone."""
        self.models = models
        self.metrics = metrics
        self.runner = batcher.run if batcher is not None else self._run

    def _run(self, loaded, feeds, fetches) -> list:
        if self.metrics is not None:
            self.metrics.session_run()
        return inference.run(loaded, feeds, fetches)

    def status(self, name: str, version: int | None) -> list[tuple[int, VersionState]]:
        """The versions the server knows of a model, newest first; labels play no part, as in
        TF Serving's GetModelStatus."""
        model = self.models.known(name)
        states = model.status() if model is not None else []
        if version is not None:
            states = [(step, state) for step, state in states if step == version]
            if not states:
                raise not_found(f"Could not find version {version} of model {name}")
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        return states

    def metadata(self, target: Target) -> Answer:
        """The version's signature defs (``Signature`` by key)."""
        with self.models.handle(target.model, target.version, target.label) as servable:
            return Answer(dict(servable.loaded.signatures), servable.step, "")

    def acquire(self, target: Target) -> Servable:
        """The version a request names, held until its ``release``: the REST front holds it
        from the parse of a body to its run, so both see the same version (a swap between
        them could change an input's dtype under the request)."""
        return self.models.acquire(target.model, target.version, target.label)

    def predict(self, target: Target, signature_name: str, inputs: dict[str, np.ndarray],
                output_filter: tuple[str, ...] = ()) -> Answer:
        servable = self.acquire(target)
        try:  # a predict is the hot path: no context manager's generator around it
            return self.predict_on(target.model, servable, signature_name, inputs, output_filter)
        finally:
            servable.release()

    def predict_on(self, model: str, servable: Servable, signature_name: str,
                   inputs: dict[str, np.ndarray], output_filter: tuple[str, ...] = ()) -> Answer:
        """``predict`` on a version of ``model`` the caller holds (``acquire``)."""
        started = time.perf_counter()
        outputs = inference.predict(servable.loaded, signature_name, inputs, output_filter,
                                    self.runner)
        self._runtime(model, "Predict", started)
        return Answer(outputs, servable.step, inference.signature_key(signature_name))

    def classify(self, target: Target, signature_name: str, examples: np.ndarray) -> Answer:
        with self.models.handle(target.model, target.version, target.label) as servable:
            started = time.perf_counter()
            result = inference.classify(servable.loaded, signature_name, examples, self.runner)
            self._runtime(target.model, "Classify", started)
            return Answer(result, servable.step, inference.signature_key(signature_name))

    def regress(self, target: Target, signature_name: str, examples: np.ndarray) -> Answer:
        with self.models.handle(target.model, target.version, target.label) as servable:
            started = time.perf_counter()
            result = inference.regress(servable.loaded, signature_name, examples, self.runner)
            self._runtime(target.model, "Regress", started)
            return Answer(result, servable.step, inference.signature_key(signature_name))

    def _runtime(self, model: str, api: str, started: float) -> None:
        """TF Serving's runtime_latency: the model's own run, parsing and rendering left out."""
        if self.metrics is not None:
            self.metrics.runtime(model, api, time.perf_counter() - started)

    def multi_inference(self, target: Target, tasks: list[inference.Task],
                        examples: np.ndarray) -> Answer:
        with self.models.handle(target.model, target.version, target.label) as servable:
            results = inference.multi_inference(servable.loaded, tasks, examples, self.runner)
            return Answer(results, servable.step, "")
