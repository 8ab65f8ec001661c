"""Predict, classify, regress and multi-inference on one loaded version, as TF Serving's
``predict_util.cc``, ``classifier.cc``, ``regressor.cc`` and ``multi_inference.cc`` run them:
the same signature rules, checks, error codes and messages. Arrays in, arrays out; no wire
format here, and no version resolution (the caller holds a handle on ``loaded``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from consumer.loader import Loaded
from consumer.serving.errors import ServingError, from_tf, from_undecodable, invalid
from consumer.serving.json_tensor import type_name
from consumer.signatures import Signature
from shared.tfcompat import tf

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"


# Who runs the session: ``run`` alone, or a batcher that merges runs (consumer.serving.batching).
Runner = Callable[[Loaded, dict[str, np.ndarray], tuple[str, ...]], list]


@dataclass
class Classification:
    labels: list[list[bytes]]  # per example, per class ("" when the model gives no classes)
    scores: list[list[float]]  # per example, per class (0 when the model gives no scores)


def signature_key(name: str) -> str:
    return name or DEFAULT_SIGNATURE


def run(loaded: Loaded, feeds: dict[str, np.ndarray], fetches: tuple[str, ...]) -> list:
    """One run of the version's session; TF's own errors pass through with their code, those
    whose message is not UTF-8 too (a malformed ``tf.Example`` fed to ``parse_example``: TF
    quotes its bytes). Every front and the batcher run here, so each gets the same answer."""
    try:
        return loaded.run(feeds, fetches)
    except tf.errors.OpError as err:
        raise from_tf(err) from None
    except UnicodeDecodeError as err:  # TF's binding could not decode the error's message
        raise from_undecodable(err) from None


# -- predict -----------------------------------------------------------------------------------


def predict_signature(loaded: Loaded, name: str) -> Signature:
    signature = loaded.signatures.get(signature_key(name))
    if signature is None:
        raise ServingError("FAILED_PRECONDITION",
                           f'Serving signature key "{signature_key(name)}" not found.')
    return signature


def predict(loaded: Loaded, signature_name: str, inputs: dict[str, np.ndarray],
            output_filter: tuple[str, ...] = (), runner: Runner = run) -> dict[str, np.ndarray]:
    """Output key -> array. ``inputs`` are keyed by the signature's input names; their dtypes
    are checked against the signature's, as TF's runtime would check them."""
    signature = predict_signature(loaded, signature_name)
    _check_input_names(inputs, signature)
    for index, (key, array) in enumerate(inputs.items()):
        want = signature.inputs[key]
        if np.asarray(array).dtype != want.dtype and not (
                want.dtype == object and np.asarray(array).dtype.kind in "OSU"):
            raise invalid(f"Expects arg[{index}] to be {type_name(want.dtype_name)} but "
                          f"{_numpy_type_name(np.asarray(array))} is provided")
    keys = _output_keys(signature, output_filter)
    feeds = {signature.inputs[key].name: array for key, array in inputs.items()}
    values = runner(loaded, feeds, signature.fetches(keys))
    return dict(zip(keys, values))


def _check_input_names(inputs: dict, signature: Signature) -> None:
    sent, wanted = set(inputs), set(signature.inputs)
    if sent != wanted:
        raise invalid(
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
            f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")


def _output_keys(signature: Signature, output_filter: tuple[str, ...]) -> tuple[str, ...]:
    if not output_filter:
        return tuple(sorted(signature.outputs))
    seen = set()
    for key in output_filter:
        if key not in signature.outputs:
            raise invalid(f"output tensor alias not found in signature: {key} Outputs expected "
                          f"to be in the set {{{','.join(sorted(signature.outputs))}}}.")
        if key in seen:
            raise invalid(f"duplicate output tensor alias: {key}")
        seen.add(key)
    return tuple(output_filter)


def _numpy_type_name(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "string"
    return {"float32": "float", "float64": "double"}.get(array.dtype.name, array.dtype.name)


# -- classify and regress ----------------------------------------------------------------------


def example_signature(loaded: Loaded, name: str) -> Signature:
    signature = loaded.signatures.get(signature_key(name))
    if signature is None:
        raise invalid(f"No signature was found with the name: {signature_key(name)}")
    return signature


def _debug(signature: Signature) -> str:
    return str(signature.proto).replace("\n", " ").strip()


def classify(loaded: Loaded, signature_name: str, examples: np.ndarray,
             runner: Runner = run) -> Classification:
    signature = example_signature(loaded, signature_name)
    keys = classify_keys(signature)
    outputs = dict(zip(keys, _run_examples(loaded, signature, examples, keys, runner)))
    return _classification(outputs, len(examples))


def _classification(outputs: dict[str, np.ndarray], examples: int) -> Classification:
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for key, array, dtype, want in (("classes", classes, "DT_STRING", "OSU"),
                                    ("scores", scores, "DT_FLOAT", "f")):
        if array is None:
            continue
        if array.ndim != 2:
            raise invalid("Expected Tensor shape: [batch_size num_classes] but got "
                          f"[{','.join(map(str, array.shape))}]")
        if array.dtype.kind not in want or (want == "f" and array.dtype != np.float32):
            raise invalid(f"Expected {key} Tensor of {dtype}. Got: {_dt_name(array)}")
        if array.shape[0] != examples:
            raise invalid(f"Expected {key} output batch size of {examples}. Got: "
                          f"{array.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(f"Tensors class and score should match in dim_size(1). Got "
                      f"{classes.shape[1]} vs. {scores.shape[1]}")
    width = (classes if classes is not None else scores).shape[1]
    labels = classes.tolist() if classes is not None else [[b""] * width] * examples
    values = scores.tolist() if scores is not None else [[0.0] * width] * examples
    return Classification(labels, values)


def regress(loaded: Loaded, signature_name: str, examples: np.ndarray,
            runner: Runner = run) -> np.ndarray:
    signature = example_signature(loaded, signature_name)
    _check_regression(signature)
    (output,) = _run_examples(loaded, signature, examples, ("outputs",), runner)
    return _regression(output, len(examples))


def _check_regression(signature: Signature) -> None:
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid(f"No regression inputs found in SignatureDef: {_debug(signature)}")
    if "outputs" not in signature.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {_debug(signature)}")


def _regression(output: np.ndarray, examples: int) -> np.ndarray:
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise invalid("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                      f"but got [{','.join(map(str, output.shape))}]")
    if output.shape[0] != examples:
        raise invalid(f"Input batch size did not match output batch size: {examples} vs. "
                      f"{output.shape[0]}")
    if output.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_dt_name(output)}")
    return output.reshape(-1)


def _run_examples(loaded: Loaded, signature: Signature, examples: np.ndarray,
                  keys: tuple[str, ...], runner: Runner) -> list[np.ndarray]:
    if not len(examples):
        raise invalid("Input is empty.")
    return runner(loaded, {signature.inputs["inputs"].name: examples}, signature.fetches(keys))


def _dt_name(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "DT_STRING"
    return "DT_" + tf.dtypes.as_dtype(array.dtype).name.upper()


# -- multi-inference ---------------------------------------------------------------------------


@dataclass
class Task:
    model_name: str
    signature_name: str
    method_name: str


def multi_inference(loaded: Loaded, tasks: list[Task], examples: np.ndarray,
                    runner: Runner = run) -> list:
    """One run for several classify and regress signatures over the same examples: each result
    a ``Classification`` or a regression array, in the tasks' order."""
    signatures, seen = [], set()
    for task in tasks:  # checked in order, as TF Serving's multi_inference.cc does
        if not task.model_name:
            raise invalid("Found ModelSpec with an empty model name.")
        if task.model_name != tasks[0].model_name:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same "
                          "model name.")
        key = signature_key(task.signature_name)
        if key in seen:
            raise invalid(f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        signature = loaded.signatures.get(key)
        if signature is None:
            raise invalid(f"Requested signature not found in model graph: {key}")
        if task.method_name not in (CLASSIFY, REGRESS):
            raise ServingError("UNIMPLEMENTED",
                               f"Unsupported signature method_name: {task.method_name}")
        if task.method_name == CLASSIFY:
            classify_keys(signature)
        else:
            _check_regression(signature)
        signatures.append(signature)
    if not len(examples):
        raise invalid("Input is empty.")
    feeds = {name: examples for name in sorted({s.inputs["inputs"].name for s in signatures})}
    fetches = tuple(sorted({t.name for s in signatures for t in s.outputs.values()}))
    values = dict(zip(fetches, runner(loaded, feeds, fetches)))
    results = []
    for task, signature in zip(tasks, signatures):
        if task.method_name == CLASSIFY:
            outputs = {key: values[signature.outputs[key].name] for key in classify_keys(signature)}
            results.append(_classification(outputs, len(examples)))
        else:
            results.append(_regression(values[signature.outputs["outputs"].name], len(examples)))
    return results


def classify_keys(signature: Signature) -> tuple[str, ...]:
    """The classification outputs of a signature that passes TF Serving's structural check."""
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise invalid(f"No classification inputs found in SignatureDef: {_debug(signature)}")
    keys = tuple(key for key in ("classes", "scores") if key in signature.outputs)
    if not keys:
        raise invalid('Expected classification signature outputs to contain at least one of '
                      f'"classes" or "scores". Signature was: {_debug(signature)}')
    return keys
