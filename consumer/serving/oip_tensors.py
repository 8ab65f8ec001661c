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

# the JSON values each datatype takes, by numpy's kind of the array they make
_JSON_KINDS = {"BOOL": "b", "BYTES": "U"}
_INT_KINDS, _FLOAT_KINDS = "iu", "iuf"


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


def element_count(name: str, datatype: str, shape, max_elements: int) -> int:
    """The elements ``shape`` holds, checked: a known datatype, dimensions that are whole and
    not negative, and a product within ``max_elements`` (computed without building anything)."""
    if datatype not in DTYPES:
        raise invalid(f"input '{name}': unsupported datatype '{datatype}' (one of "
                      f"{', '.join(DTYPES)})")
    if not isinstance(shape, (list, tuple)) or not all(
            type(dim) is int and dim >= 0 for dim in shape):
        raise invalid(f"input '{name}': shape must be a list of dimensions >= 0, got {shape!r}")
    count = math.prod(shape)
    if count > max_elements:
        raise invalid(f"input '{name}': shape {list(shape)} holds {count} elements, over the "
                      f"limit of {max_elements} (--max_request_elements)")
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
    values must be of the datatype's kind: a float is not taken for an INT32, nor 1 for a BOOL
    (numpy would truncate or convert them without a word)."""
    if not isinstance(data, list):
        raise invalid(f"input '{tensor.name}': 'data' must be a list")
    try:
        array = np.array(data)
    except ValueError:
        raise invalid(f"input '{tensor.name}': 'data' is ragged: its nested lists are not "
                      "of one shape") from None
    if array.size != count:
        raise invalid(f"input '{tensor.name}': {array.size} values, where shape "
                      f"{tensor.shape} takes {count}")
    kind = array.dtype.kind if array.size else None
    datatype = tensor.datatype
    allowed = _JSON_KINDS.get(datatype, _INT_KINDS if datatype[0] in "IU" else _FLOAT_KINDS)
    if kind in "fO" and datatype[0] in "IU":  # numpy made floats of ints past int64's range
        return _wide_ints(tensor, data, array.size)
    if kind is not None and kind not in allowed:
        raise invalid(f"input '{tensor.name}': its values are not all of datatype {datatype}")
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = [value.encode("utf-8", "surrogateescape") for value in array.ravel().tolist()]
        return out.reshape(tensor.shape)
    dtype = DTYPES[datatype]
    if kind in _INT_KINDS and dtype.kind in _INT_KINDS:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise invalid(f"input '{tensor.name}': a value is out of the range of {datatype}")
    return array.astype(dtype).reshape(tensor.shape)


def _wide_ints(tensor: Tensor, data: list, count: int) -> np.ndarray:
    """An integer tensor numpy read as floats (UINT64 values past int64's range with others):
    each value checked to be an integer, then read straight into the datatype."""
    flat, stack = [], [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif type(item) is not int:
            raise invalid(f"input '{tensor.name}': its values are not all of datatype "
                          f"{tensor.datatype}")
        else:
            flat.append(item)
    try:
        return np.array(flat, dtype=DTYPES[tensor.datatype]).reshape(tensor.shape)
    except OverflowError:
        raise invalid(f"input '{tensor.name}': a value is out of the range of "
                      f"{tensor.datatype}") from None


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
