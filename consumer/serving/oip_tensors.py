"""Tensors of the Open Inference Protocol (KServe V2) as numpy arrays, with no wire in sight:
the datatype names, the raw byte form both the REST binary extension and gRPC's
``raw_*_contents`` use, and the JSON ``data`` form. Every size a client states is checked
against its bound and against the bytes it sent before an array is built from it.

The datatypes are the spec's table (open-inference-protocol ``inference_rest.md``, "Tensor Data
Types"); BF16 is left out (numpy has no bfloat16 of its own). Raw bytes are little-endian,
row-major, with no padding; a BOOL is one byte; a BYTES element is a 4-byte little-endian length
and its bytes (Triton's ``extension_binary_data.md``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from consumer.serving.errors import invalid

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"), "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object)}

# A TF dtype (``TensorSpec.dtype_name``) as the protocol names it
FROM_TF = {"DT_BOOL": "BOOL", "DT_INT8": "INT8", "DT_INT16": "INT16", "DT_INT32": "INT32",
           "DT_INT64": "INT64", "DT_UINT8": "UINT8", "DT_UINT16": "UINT16",
           "DT_UINT32": "UINT32", "DT_UINT64": "UINT64", "DT_HALF": "FP16", "DT_FLOAT": "FP32",
           "DT_DOUBLE": "FP64", "DT_STRING": "BYTES", "DT_BFLOAT16": "BF16"}

# the JSON values (as orjson reads them) each datatype takes: a bool is not a number here
_JSON_TYPES = {"BOOL": {bool}, "BYTES": {str}, "INT": {int}, "FP": {int, float}}
_INT_KINDS = "iu"


@dataclass
class Tensor:
    """One named tensor of a request or an answer."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None


def datatype_of(array: np.ndarray) -> str:
    """The protocol's name for an array's dtype (an answer's tensors)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    for name, dtype in DTYPES.items():
        if dtype == array.dtype.newbyteorder("<") or dtype == array.dtype:
            return name
    raise invalid(f"the model answered a tensor of dtype {array.dtype}, which the Open "
                  "Inference Protocol has no datatype for")


MAX_RANK = 64  # numpy's most dimensions (TF's TensorShape takes 254): past it, 400, not a 500


def element_count(name: str, datatype: str, shape, max_elements: int) -> int:
    """The elements ``shape`` holds, checked: a known datatype, at most ``MAX_RANK`` dimensions,
    each whole and not negative, and their product within ``max_elements`` (computed without
    building anything). A dimension of 0 does not make the others free: the product of the
    others is held to the bound too, so no shape reaches numpy or TF whose size overflows
    (``[0, 2**62, 2**62]`` would make numpy raise, and is no tensor a client needs)."""
    if datatype not in DTYPES:
        raise invalid(f"input '{name}': unsupported datatype '{datatype}' (one of "
                      f"{', '.join(DTYPES)})")
    if isinstance(shape, (list, tuple)) and len(shape) > MAX_RANK:
        raise invalid(f"input '{name}': shape has {len(shape)} dimensions, over the limit of "
                      f"{MAX_RANK}")
    if not isinstance(shape, (list, tuple)) or not all(
            type(dim) is int and dim >= 0 for dim in shape):
        raise invalid(f"input '{name}': shape must be a list of dimensions >= 0, got {shape!r}")
    count, spread = math.prod(shape), math.prod(dim for dim in shape if dim)
    if spread > max_elements:  # spread == count unless a dimension is 0
        held = f"holds {count} elements" if count else \
            f"holds 0 elements, but its other dimensions multiply to {spread}"
        raise invalid(f"input '{name}': shape {list(shape)} {held}, over the limit of "
                      f"{max_elements} (--max_request_elements)")
    return count


def from_raw(tensor: Tensor, data: bytes | memoryview, count: int) -> np.ndarray:
    """The array ``data`` holds for ``tensor`` (its ``count`` elements, checked), row-major."""
    if tensor.datatype == "BYTES":
        return _bytes_elements(tensor.name, data, count).reshape(tensor.shape)
    dtype = DTYPES[tensor.datatype]
    want = count * dtype.itemsize
    if len(data) != want:
        raise invalid(f"input '{tensor.name}': {len(data)} bytes of data, where shape "
                      f"{tensor.shape} of {tensor.datatype} takes {want}")
    if tensor.datatype == "BOOL":
        return np.frombuffer(data, np.uint8).astype(np.bool_).reshape(tensor.shape)
    return np.frombuffer(data, dtype).reshape(tensor.shape)


def _bytes_elements(name: str, data, count: int) -> np.ndarray:
    out = np.empty(count, dtype=object)
    view, at = memoryview(data), 0
    for index in range(count):
        if at + 4 > len(view):
            raise invalid(f"input '{name}': its data ends before element {index} of {count}")
        (size,) = struct.unpack_from("<I", view, at)
        if at + 4 + size > len(view):
            raise invalid(f"input '{name}': element {index} says {size} bytes, past the end of "
                          "its data")
        out[index] = bytes(view[at + 4:at + 4 + size])
        at += 4 + size
    if at != len(view):
        raise invalid(f"input '{name}': {len(view) - at} bytes of data left after its {count} "
                      "elements")
    return out


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """An answer's array as raw bytes (little-endian; BOOL one byte; BYTES length-prefixed)."""
    if datatype == "BYTES":
        parts = []
        for element in array.ravel():
            value = element if isinstance(element, bytes) else str(element).encode()
            parts.append(struct.pack("<I", len(value)))
            parts.append(value)
        return b"".join(parts)
    if datatype == "BOOL":
        return np.ascontiguousarray(array, np.uint8).tobytes()
    return np.ascontiguousarray(array, DTYPES[datatype]).tobytes()


def from_json(tensor: Tensor, data, count: int) -> np.ndarray:
    """The array a JSON ``data`` value (flat, or nested as the shape) holds for ``tensor``. Its
    values are checked by their JSON type before numpy sees them: numpy would make one wide
    string of every value if one were a string (a 2 MB request of one 1 MB string and 1,999
    short ones took 8 GB), take a float for an INT32 or 1 for a BOOL without a word, and make
    infinities of FP16 values past its range."""
    if not isinstance(data, list):
        raise invalid(f"input '{tensor.name}': 'data' must be a list")
    flat = _flattened(tensor.name, data)
    if len(flat) != count:
        raise invalid(f"input '{tensor.name}': {len(flat)} values, where shape "
                      f"{tensor.shape} takes {count}")
    datatype = tensor.datatype
    kinds = set(map(type, flat))
    if not kinds <= _JSON_TYPES.get(datatype, _JSON_TYPES["FP"] if datatype[0] == "F"
                                    else _JSON_TYPES["INT"]):
        raise invalid(f"input '{tensor.name}': its values are not all of datatype {datatype}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = [value.encode("utf-8", "surrogateescape") for value in flat]
        return out.reshape(tensor.shape)
    dtype = DTYPES[datatype]
    # read wide (an int past the wide type raises), checked against the datatype's range, then
    # narrowed; a float narrowed past its range raises rather than becoming infinite
    wide = {"i": np.int64, "u": np.uint64}.get(dtype.kind, np.float64)
    try:
        array = np.array(flat, dtype=wide)
        if dtype.kind in _INT_KINDS and array.size:
            info = np.iinfo(dtype)
            if array.min() < info.min or array.max() > info.max:
                raise OverflowError
        with np.errstate(over="raise"):
            return array.astype(dtype).reshape(tensor.shape)
    except (OverflowError, FloatingPointError):
        raise invalid(f"input '{tensor.name}': a value is out of the range of "
                      f"{datatype}") from None


def _flattened(name: str, data: list) -> list:
    """The values of nested lists, row-major; refused if the lists are ragged (not one shape).
    Level by level: every item of a level is a list of one length, or none is a list."""
    level = data
    while level and isinstance(level[0], list):
        width = len(level[0])
        if not all(type(item) is list and len(item) == width for item in level):
            raise invalid(f"input '{name}': 'data' is ragged: its nested lists are not of one "
                          "shape")
        level = [value for item in level for value in item]
    if any(type(item) is list for item in level):
        raise invalid(f"input '{name}': 'data' is ragged: its nested lists are not of one shape")
    return level


def to_json(array: np.ndarray, datatype: str) -> list | None:
    """An answer's array as a flat JSON list; None for BYTES that are not all UTF-8 text
    (JSON cannot carry them: the caller sends that tensor as binary data)."""
    flat = array.ravel()
    if datatype == "BYTES":
        try:
            return [value.decode() if isinstance(value, bytes) else str(value)
                    for value in flat.tolist()]
        except UnicodeDecodeError:
            return None
    return flat.tolist()
