"""The Open Inference Protocol (KServe V2), protocol-neutral: health, server and model metadata,
and inference over the served models, for the REST front (``oip_rest``) and the gRPC one
(``oip_grpc``) alike. Both fronts turn their wire form into ``InferRequest`` and back; every
rule of the protocol lives here once.

A model is its SavedModel's serving signature: the signature's input and output keys are the
tensor names, their dtypes the datatypes, their shapes the shapes (-1 for a dimension the graph
leaves open). Another signature is reached with the request parameter ``signature_name`` (our
own, as TF Serving's ``signature_name`` field). An inference holds one version from its checks
to the end of its run (``Calls.acquire``), so a swap never changes the version under it, and
the answer names the version that gave it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from consumer.serving import inference
from consumer.serving.calls import Calls, Target
from consumer.serving.errors import ServingError, invalid, not_found
from consumer.serving.grpc_health import all_available
from consumer.serving.oip_tensors import FROM_TF, Tensor, datatype_of
from consumer.signatures import Signature

SERVER_NAME = "tf-handoff"
SERVER_VERSION = "0.1.0"
PLATFORM = "tensorflow_savedmodel"  # Triton's name for a TensorFlow SavedModel
BINARY = "binary_tensor_data"  # the extensions' names as Triton advertises them
REPOSITORY = "model_repository"
SIGNATURE_PARAMETER = "signature_name"


@dataclass
class InferRequest:
    """An inference, whatever the wire: the model, a version ("" for the latest), the inputs
    (arrays built and bounded by the front), the outputs asked for (none: all)."""

    model: str
    version: str = ""
    id: str = ""
    parameters: dict = field(default_factory=dict)
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@dataclass
class InferResult:
    model: str
    version: int
    id: str
    outputs: list[Tensor]


def target(model: str, version: str) -> Target:
    """What a request names. The protocol's version is a string; a SavedModel's is a number,
    so any other string names a version that does not exist (MLServer's words for it)."""
    if not model:
        raise invalid("the request names no model")
    if not version:
        return Target(model)
    # versions here are numbers, in ASCII digits: str.isdigit takes "²", which int() refuses
    if not (version.isascii() and version.isdigit()) or int(version) >= 2**63:
        raise not_found(f"Model {model} with version {version} not found")
    return Target(model, int(version))


class Oip:
    """The protocol's calls over the server's ``Calls``."""

    def __init__(self, calls: Calls, max_elements: int, repository: bool = False) -> None:
        """``repository``: the model repository extension is on (a server run from a model
        config file), so ``/v2`` advertises it."""
        self.calls, self.max_elements = calls, max_elements
        self.extensions = [BINARY] + ([REPOSITORY] if repository else [])

    # -- health and metadata ---------------------------------------------------------------

    def server_ready(self) -> bool:
        """Ready while every configured model has a version to answer from (as gRPC health)."""
        models = list(self.calls.models)
        return bool(models) and all_available(models)

    def model_ready(self, model: str, version: str) -> bool:
        try:
            self._hold(target(model, version)).release()
        except ServingError:
            return False
        return True

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": self.extensions}

    def model_metadata(self, model: str, version: str) -> dict:
        servable = self._hold(target(model, version))
        try:
            signature = servable.loaded.signatures.get(inference.DEFAULT_SIGNATURE)
            served = self.calls.models.get(model)
            steps = sorted(served.manager.steps(), reverse=True) if served is not None else []
            return {"name": model,
                    "versions": [str(step) for step in steps] or [str(servable.step)],
                    "platform": PLATFORM,
                    "inputs": _tensors(signature, "inputs"),
                    "outputs": _tensors(signature, "outputs")}
        finally:
            servable.release()

    def _hold(self, wanted: Target):
        """The version a request names, held; an unknown model in the words tritonclient's
        examples look for (Triton's ``Request for unknown model``)."""
        try:
            return self.calls.acquire(wanted)
        except ServingError as err:
            if err.code == "NOT_FOUND" and wanted.version is None:
                raise not_found(f"Request for unknown model: '{wanted.model}' is not "
                                "found") from None
            raise

    # -- inference -------------------------------------------------------------------------

    def infer(self, request: InferRequest) -> InferResult:
        wanted = target(request.model, request.version)
        signature_name = request.parameters.get(SIGNATURE_PARAMETER, "")
        if not isinstance(signature_name, str):
            raise invalid(f"parameter '{SIGNATURE_PARAMETER}' must be a string")
        servable = self._hold(wanted)
        try:
            signature = inference.predict_signature(servable.loaded, signature_name)
            inputs = _checked_inputs(request.inputs, signature)
            answer = self.calls.predict_on(wanted.model, servable, signature_name, inputs,
                                           tuple(request.outputs))
        finally:
            servable.release()
        outputs = [Tensor(name, datatype_of(np.asarray(array)), list(np.shape(array)),
                          np.asarray(array)) for name, array in answer.result.items()]
        return InferResult(wanted.model, answer.version, request.id, outputs)


def _checked_inputs(tensors: list[Tensor], signature: Signature) -> dict[str, np.ndarray]:
    """The request's inputs by name, each of the datatype the signature takes."""
    inputs: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor.name in inputs:
            raise invalid(f"input '{tensor.name}' is given twice")
        spec = signature.inputs.get(tensor.name)
        if spec is None:
            raise invalid(f"unexpected input '{tensor.name}': the model's inputs are "
                          f"{', '.join(sorted(signature.inputs))}")
        want = FROM_TF.get(spec.dtype_name, spec.dtype_name)
        if tensor.datatype != want:
            raise invalid(f"input '{tensor.name}': datatype {tensor.datatype}, where the model "
                          f"takes {want}")
        inputs[tensor.name] = tensor.array
    missing = sorted(set(signature.inputs) - set(inputs))
    if missing:
        raise invalid(f"expected {len(signature.inputs)} inputs but got {len(inputs)}: "
                      f"missing {', '.join(missing)}")
    return inputs


def _tensors(signature: Signature | None, side: str) -> list[dict]:
    if signature is None:
        return []
    return [{"name": key, "datatype": FROM_TF.get(spec.dtype_name, spec.dtype_name),
             "shape": list(spec.shape) if spec.shape is not None else [-1]}
            for key, spec in sorted(getattr(signature, side).items())]
