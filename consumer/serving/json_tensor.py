"""TF Serving's JSON for predict inputs (its ``util/json_tensor.cc``): a parsed body's
``instances`` (rows) or ``inputs`` (columns) to one array per signature input. Its own tests are
the oracle: the same values accepted, the same errors given, texts included.

- ``instances`` holds one entry per example, each an input's value or, for several inputs, an
  object keyed by input name; the arrays get a batch dimension, one row per entry.
- ``inputs`` holds the value of the one input, or an object keyed by input name (extra keys are
  ignored, as TF Serving ignores them).
- Binary strings travel as ``{"b64": "..."}``.

A well-formed numeric value takes one numpy call; anything else is walked value by value, as
TF Serving walks it, for its exact error. Where we differ on purpose (the README lists it): a
number outside its dtype's range (int8 300, float32 1e39) is refused, where TF Serving truncates
it or makes it infinite.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys

import numpy as np

from consumer.serving.errors import ServingError, invalid
from consumer.serving.json_parse import Body, Deep, debug, json_type, shape_text

# TF's DataTypeString names, as its messages spell them.
TYPE_NAMES = {"DT_FLOAT": "float", "DT_DOUBLE": "double", "DT_INT32": "int32", "DT_UINT8": "uint8",
              "DT_INT16": "int16", "DT_INT8": "int8", "DT_STRING": "string",
              "DT_INT64": "int64", "DT_BOOL": "bool", "DT_UINT32": "uint32",
              "DT_UINT64": "uint64", "DT_UINT16": "uint16", "DT_HALF": "half",
              "DT_BFLOAT16": "bfloat16", "DT_COMPLEX64": "complex64",
              "DT_COMPLEX128": "complex128"}
# numpy's most dimensions (NPY_MAXDIMS): 64 since numpy 2, 32 before. A JSON value nested
# deeper, and shallower than Python's parser goes (~1,000), must be refused before numpy sees it.
MAX_RANK = 64 if int(np.__version__.split(".")[0]) >= 2 else 32
_INTS = {"DT_INT32", "DT_INT16", "DT_INT8", "DT_UINT8", "DT_INT64", "DT_UINT32", "DT_UINT64"}
_READABLE = _INTS | {"DT_FLOAT", "DT_DOUBLE", "DT_STRING", "DT_BOOL"}


def type_name(dtype_name: str) -> str:
    return TYPE_NAMES.get(dtype_name, dtype_name.removeprefix("DT_").lower())


# -- predict requests --------------------------------------------------------------------------


def predict_inputs(body: Body, specs: dict) -> tuple[dict[str, np.ndarray], bool]:
    """Input name -> array, and whether the request was in row format. ``specs`` are the
    signature's inputs (``consumer.signatures.TensorSpec``)."""
    doc = body.doc
    for key in ("instances", "inputs"):
        if isinstance(doc.get(key), Deep):
            raise invalid(f"JSON Parse error: '{key}' nests deeper than this server parses "
                          f"({sys.getrecursionlimit()} levels)")
    if "instances" in doc and "inputs" in doc:
        raise invalid(f"JSON Value: {debug(doc)} Not formatted correctly expecting only one of "
                      "'inputs' or 'instances' keys to exist ")
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid(f"JSON Value: {debug(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid(f"JSON Value: {debug(doc)} No values in 'instances' array")
        return _rows(instances, specs, body), True
    if "inputs" in doc:
        return _columns(doc["inputs"], specs, body), False
    raise invalid("Missing 'inputs' or 'instances' key")


def is_b64(value) -> bool:
    return (isinstance(value, dict) and len(value) == 1
            and isinstance(value.get("b64"), str))


def _is_named(value) -> bool:
    return isinstance(value, dict) and not is_b64(value)


def _rows(instances: list, specs: dict, body: Body) -> dict[str, np.ndarray]:
    if not isinstance(instances[0], dict) and len(specs) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple input "
                      "tensors required as per tensorinfo_map")
    if _is_named(instances[0]):
        columns = _named_rows(instances, specs)
    else:
        for index, row in enumerate(instances):
            if _is_named(row):
                raise invalid(f"Expecting value/list but got object at item {index} of input list")
        columns = {next(iter(specs)): instances}
    fast = {name: _fast_array(rows, specs[name], body) for name, rows in columns.items()}
    if all(array is not None for array in fast.values()):
        return fast
    return {name: _slow_rows(instances, name, columns[name], specs, body) for name in columns}


def _named_rows(instances: list, specs: dict) -> dict[str, list]:
    wanted = sorted(specs)
    for index, row in enumerate(instances):
        if not _is_named(row):
            raise invalid(f"Expecting object but got list at item {index} of input list")
        for key in row:
            if key not in specs:
                raise invalid(f"Failed to process element: {index} key: {key} of 'instances' "
                              f"list. Error: INVALID_ARGUMENT: JSON object: does not have named "
                              f"input: {key}")
        if len(row) != len(specs):
            raise invalid(f"Failed to process element: {index} of 'instances' list. JSON object: "
                          f"{debug(row)} keys must be equal to: {','.join(wanted)}")
    return {name: [row[name] for row in instances] for name in specs}


def _slow_rows(instances: list, name: str, rows: list, specs: dict, body: Body) -> np.ndarray:
    """TF Serving's own walk, value by value, for the exact error; or the array if all is well
    after all (a case the fast path would not take, such as a mix of b64 and text)."""
    spec, first_shape, first_size, values = specs[name], None, None, []
    named = _is_named(instances[0])
    for index, item in enumerate(rows):
        try:
            shape = dense_shape(item)
            count = _fill(item, 0, shape, spec, values, body)
            if first_shape is None:
                first_shape, first_size = shape, count
            elif count != first_size:
                raise invalid(f"Expecting tensor size: {first_size} but got: {count}")
            elif shape != first_shape:
                raise invalid(f"Expecting shape {shape_text(first_shape)} but got: "
                              f"{shape_text(shape)}")
        except ServingError as err:
            where = f" key: {name}" if named else ""
            raise invalid(f"Failed to process element: {index}{where} of 'instances' list. "
                          f"Error: {err.code}: {err.message}") from None
    return _array(values, [len(rows), *first_shape], spec, name)


def _columns(inputs, specs: dict, body: Body) -> dict[str, np.ndarray]:
    if not _is_named(inputs):
        if len(specs) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input "
                          "tensors required as per tensorinfo_map")
        values = {next(iter(specs)): inputs}
    else:
        for name in sorted(specs):
            if name not in inputs:
                raise invalid(f"Missing named input: {name} in 'inputs' object.")
        values = {name: inputs[name] for name in specs}
    arrays = {}
    for name, value in values.items():
        array = _fast_array(value, specs[name], body)
        if array is None:
            shape, flat = dense_shape(value), []
            _fill(value, 0, shape, specs[name], flat, body)
            array = _array(flat, shape, specs[name], name)
        arrays[name] = array
    return arrays


def dense_shape(value) -> list[int]:
    """The shape the first element at each level gives (TF Serving's GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list[int], spec, out: list, body: Body) -> int:
    """Append ``value``'s scalars to ``out``, checked as TF Serving's FillTensorProto checks
    them; the number appended. Iterative, so no nesting is too deep for it."""
    count, stack = 0, [(value, level)]
    while stack:
        value, level = stack.pop()
        if not isinstance(value, list):
            if level != len(shape):
                raise invalid(f"JSON Value: {debug(value)} found at incorrect level: {level + 1} "
                              f"in the JSON DOM. Expected at level: {len(shape)}")
            out.append(_scalar(value, spec, body))
            count += 1
            continue
        if level >= len(shape):
            raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(value) != shape[level]:
            raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                          f"expected size: {shape[level]}")
        stack.extend((item, level + 1) for item in reversed(value))
    return count


_RANGES = {"DT_INT32": (-2**31, 2**31 - 1), "DT_INT16": (-2**15, 2**15 - 1),
           "DT_INT8": (-2**7, 2**7 - 1), "DT_UINT8": (0, 2**8 - 1),
           "DT_INT64": (-2**63, 2**63 - 1), "DT_UINT32": (0, 2**32 - 1),
           "DT_UINT64": (0, 2**64 - 1)}
# A double past this rounds to infinity as a float32 (halfway to the next power of two).
_FLOAT32_MAX = float(np.finfo(np.float32).max) * (1 + 2.0**-25)


def _scalar(value, spec, body: Body):
    """One JSON scalar as a value of ``spec``'s dtype, or TF Serving's type error."""
    dtype = spec.dtype_name
    if dtype not in _READABLE:
        raise ServingError("UNIMPLEMENTED",
                           f"Conversion of JSON Value: {debug(value)} to type: {type_name(dtype)}")
    if dtype == "DT_STRING":
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        if isinstance(value, dict):
            return b64_decode(value)
        raise _type_error(value, dtype)
    if dtype == "DT_BOOL":
        if isinstance(value, bool):
            return value
        raise _type_error(value, dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype in _INTS:
        low, high = _RANGES[dtype]
        if not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    try:
        number = float(value)
    except OverflowError:  # an integer token too big for a double
        raise invalid("JSON Parse error: Number too big to be stored in double.") from None
    if abs(number) == float("inf"):
        if not body.has_infinity:
            raise invalid("JSON Parse error: Number too big to be stored in double.")
    elif dtype == "DT_FLOAT" and abs(number) > _FLOAT32_MAX:
        raise invalid(f"JSON Value: {debug(value)} Type: Number is out of range for type: float")
    return number


def _type_error(value, dtype: str) -> ServingError:
    return invalid(f"JSON Value: {debug(value)} Type: {json_type(value)} is not of expected "
                   f"type: {type_name(dtype)}")


def b64_decode(value) -> bytes:
    if not is_b64(value):
        raise invalid(f"JSON Value: {debug(value)} not formatted correctly for base64 data")
    text = re.sub(r"\s+", "", value["b64"])  # absl's decoder skips whitespace, and so do we
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _array(values: list, shape: list[int], spec, name: str) -> np.ndarray:
    if len(shape) > MAX_RANK:  # checked after the walk: TF Serving's own errors come first
        raise invalid(f"Input: {name} has {len(shape)} dimensions; this server takes at most "
                      f"{MAX_RANK} (numpy's limit; TF Serving's is TF's 254)")
    if spec.dtype_name == "DT_STRING":
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    return np.array(values, dtype=spec.dtype).reshape(shape)


def _fast_array(value, spec, body: Body) -> np.ndarray | None:
    """The array for a well-formed numeric value in one numpy call, or None: then the slow walk
    decides, and gives TF Serving's error if there is one."""
    dtype = spec.dtype_name
    if dtype == "DT_STRING" or dtype not in _READABLE or (body.has_bools and dtype != "DT_BOOL"):
        return None
    try:
        raw = np.asarray(value)
    except (ValueError, OverflowError):  # ragged, or an integer past 64 bits
        return None
    kind = raw.dtype.kind
    if dtype == "DT_BOOL":
        return raw if kind == "b" else None
    if not raw.size:  # empty lists: numpy calls them float64, TF Serving any dtype
        return raw.astype(spec.dtype) if kind in "iuf" else None
    if dtype in _INTS:
        low, high = _RANGES[dtype]
        if kind not in "iu" or raw.min() < low or raw.max() > high:
            return None
        return raw.astype(spec.dtype)
    if kind not in "iuf":
        return None
    with np.errstate(over="ignore"):  # float32 overflow is found just below, and refused
        array = raw.astype(spec.dtype)
    if not (np.isfinite(array).all() or _non_finite_is_written(raw, array, body)):
        return None
    return array


def _non_finite_is_written(raw: np.ndarray, array: np.ndarray, body: Body) -> bool:
    """Whether every non-finite value came from a NaN or Infinity token, not an overflow."""
    overflowed = ~np.isfinite(array) & np.isfinite(raw)
    return not overflowed.any() and (body.has_infinity or not np.isinf(raw).any())
