"""TF Serving's JSON for tensors: a predict request's body to feeds, fetched values to a response.

The rules are those of TF Serving's ``api_rest.md`` and ``util/json_tensor.cc``:

- ``instances`` (row format) is a list with one entry per example. With one input, an entry is
  that input's value; with several, an object keyed by input name. The answer is
  ``predictions``: a list of values for one output, a list of objects for several.
- ``inputs`` (columnar format) is a value for a single input, or an object keyed by input name.
  The answer is ``outputs``: the value for one output, an object keyed by name for several.
- Binary strings travel as ``{"b64": "..."}``. String outputs are UTF-8 text, or ``{"b64"}`` when
  they are not text or their output's name ends in ``_bytes``.

Any mismatch is an ``ApiError`` with status 400. Nothing here runs TensorFlow.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np

from consumer.signatures import Signature, TensorSpec


class ApiError(Exception):
    """A request that cannot be answered: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictRequest:
    signature_name: str
    row_format: bool
    body: object  # the ``instances`` or ``inputs`` value, still JSON


def parse_request(body: bytes) -> PredictRequest:
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"JSON parse error: {err}") from None
    if not isinstance(request, dict):
        raise ApiError(400, "request body must be a JSON object")
    signature_name = request.get("signature_name", "serving_default")
    if not isinstance(signature_name, str):
        raise ApiError(400, "'signature_name' must be a string")
    has_rows, has_columns = "instances" in request, "inputs" in request
    if has_rows and has_columns:
        raise ApiError(400, "expecting only one of 'instances' or 'inputs' key, found both")
    if not (has_rows or has_columns):
        raise ApiError(400, "Missing 'inputs' or 'instances' key")
    return PredictRequest(signature_name, has_rows,
                          request["instances"] if has_rows else request["inputs"])


def feeds(request: PredictRequest, signature: Signature) -> dict[str, np.ndarray]:
    """Graph tensor name -> value, checked against the signature's dtypes and shapes."""
    values = _rows_to_columns(request.body, signature) if request.row_format else (
        _named_columns(request.body, signature))
    arrays = {key: _to_array(key, value, signature.inputs[key]) for key, value in values.items()}
    if request.row_format and len({len(a) for a in arrays.values()}) > 1:
        raise ApiError(400, "instances must give every input the same number of examples")
    return {signature.inputs[key].name: array for key, array in arrays.items()}


def _rows_to_columns(instances, signature: Signature) -> dict[str, list]:
    if not isinstance(instances, list) or not instances:
        raise ApiError(400, "'instances' must be a non-empty list")
    keys = set(signature.inputs)
    if all(isinstance(row, dict) and "b64" not in row for row in instances):
        for row in instances:
            if set(row) != keys:
                raise ApiError(400, f"each instance must have exactly the inputs {sorted(keys)}, "
                                    f"got {sorted(row)}")
        return {key: [row[key] for row in instances] for key in keys}
    if len(keys) != 1:
        raise ApiError(400, f"signature has inputs {sorted(keys)}: each instance must be an "
                            "object keyed by input name")
    return {next(iter(keys)): instances}


def _named_columns(inputs, signature: Signature) -> dict[str, object]:
    keys = set(signature.inputs)
    if isinstance(inputs, dict) and "b64" not in inputs:
        if set(inputs) != keys:
            raise ApiError(400, f"'inputs' must have exactly the inputs {sorted(keys)}, "
                                f"got {sorted(inputs)}")
        return inputs
    if len(keys) != 1:
        raise ApiError(400, f"signature has inputs {sorted(keys)}: 'inputs' must be an object "
                            "keyed by input name")
    return {next(iter(keys)): inputs}


_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b", "c": "fiuc"}  # what JSON may give each


def _to_array(key: str, value, spec: TensorSpec) -> np.ndarray:
    if spec.dtype == object:
        value = _decode_binary(value)
    try:
        raw = np.array(value, dtype=object if spec.dtype == object else None)
    except ValueError:  # numpy refuses ragged nesting
        raise ApiError(400, f"input {key!r}: ragged or mixed nesting") from None
    if spec.dtype == object:
        if raw.size and not all(isinstance(v, (str, bytes)) for v in raw.flat):
            raise ApiError(400, f"input {key!r} expects {spec.dtype_name} (strings)")
        array = raw
    elif raw.dtype.kind not in _KINDS.get(spec.dtype.kind, spec.dtype.kind):
        raise ApiError(400, f"input {key!r} expects {spec.dtype_name}, got "
                            f"{'strings' if raw.dtype.kind in 'UO' else raw.dtype.name} values")
    else:
        array = raw.astype(spec.dtype)
    if spec.shape is not None and (len(array.shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, array.shape))):
        wanted = "[" + ", ".join("?" if d == -1 else str(d) for d in spec.shape) + "]"
        raise ApiError(400, f"input {key!r} has shape {list(array.shape)}, expected {wanted}")
    return array


def _decode_binary(value):
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise ApiError(400, "a binary value must be {\"b64\": \"<base64 string>\"}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as err:
            raise ApiError(400, f"bad base64: {err}") from None
    if isinstance(value, list):
        return [_decode_binary(v) for v in value]
    return value


# -- responses ---------------------------------------------------------------------------------


def response(request: PredictRequest, outputs: dict[str, np.ndarray]) -> dict:
    """``{"predictions": ...}`` for a row request, ``{"outputs": ...}`` for a columnar one."""
    values = {key: _to_json(key, array) for key, array in outputs.items()}
    if not request.row_format:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch = {len(value) if isinstance(value, list) else -1 for value in values.values()}
    if len(batch) != 1 or -1 in batch:
        raise ApiError(400, "outputs do not share a batch size: send 'inputs' (columnar) "
                            "instead of 'instances'")
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    keys = list(values)
    return {"predictions": [{key: values[key][i] for key in keys} for i in range(batch.pop())]}


def _to_json(key: str, array: np.ndarray):
    array = np.asarray(array)
    if array.dtype.kind in "OS":
        binary = key.endswith("_bytes")
        return _map_nested(array.tolist(), lambda b: _encode_string(b, binary))
    return array.tolist()


def _map_nested(value, convert):
    if isinstance(value, list):
        return [_map_nested(v, convert) for v in value]
    return convert(value)


def _encode_string(value: bytes, binary: bool):
    if not binary:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}


def dumps(body: dict) -> bytes:
    """JSON as TF Serving writes it: NaN and infinities as bare ``NaN``/``Infinity``."""
    return json.dumps(body, allow_nan=True, separators=(",", ":")).encode()

