"""TF Serving's JSON for tensors (its ``util/json_tensor.cc``): a predict body to arrays, output
arrays to an answer. Its own tests are the oracle: the same values are accepted, the same
errors given (texts included), and numbers written as it writes them.

- ``instances`` (row format) holds one entry per example, each an input's value or, for several
  inputs, an object keyed by input name; the answer is ``predictions``.
- ``inputs`` (columnar format) holds the value of the one input, or an object keyed by input
  name (extra keys are ignored); the answer is ``outputs``.
- Binary strings travel as ``{"b64": "..."}``; string outputs named ``*_bytes`` are sent so too.

Where we differ on purpose (the README lists it): a number outside its dtype's range (int8 300,
float32 1e39) is a 400 where TF Serving truncates it or makes it infinite; nesting past Python's
parser depth is a 400 where TF Serving's iterative parser goes on; and a request over
``max_elements`` values is refused before it is parsed.

Only numpy here, no TensorFlow: cheap to import, and it never touches a session.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from dataclasses import dataclass

import numpy as np

from consumer.serving.errors import ServingError, invalid

MAX_ELEMENTS = 1 << 20  # values and lists in one body, counted before it is parsed
DEBUG_BYTES = 256  # TF Serving cuts a value quoted in an error after this many bytes

# TF's DataTypeString names, as its messages spell them.
TYPE_NAMES = {"DT_FLOAT": "float", "DT_DOUBLE": "double", "DT_INT32": "int32", "DT_UINT8": "uint8",
              "DT_INT16": "int16", "DT_INT8": "int8", "DT_STRING": "string",
              "DT_INT64": "int64", "DT_BOOL": "bool", "DT_UINT32": "uint32",
              "DT_UINT64": "uint64", "DT_UINT16": "uint16", "DT_HALF": "half",
              "DT_BFLOAT16": "bfloat16", "DT_COMPLEX64": "complex64",
              "DT_COMPLEX128": "complex128"}
_INTS = {"DT_INT32", "DT_INT16", "DT_INT8", "DT_UINT8", "DT_INT64", "DT_UINT32", "DT_UINT64"}
_READABLE = _INTS | {"DT_FLOAT", "DT_DOUBLE", "DT_STRING", "DT_BOOL"}


def type_name(dtype_name: str) -> str:
    return TYPE_NAMES.get(dtype_name, dtype_name.removeprefix("DT_").lower())


@dataclass(frozen=True)
class Body:
    """A parsed request body, and what its raw text says about it."""

    doc: dict
    has_bools: bool  # a ``true``/``false`` token may hide in a numeric list: check each value
    has_infinity: bool  # ``Infinity`` written out; else an infinite value was a number too big


# -- parsing -----------------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_RAPIDJSON_TEXT = {  # Python's parse errors in rapidjson's words, as TF Serving reports them
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid escape character in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}


def parse(body: bytes, max_elements: int = MAX_ELEMENTS) -> Body:
    """The body's top-level object. Its size is bounded before anything is built: the count of
    commas and brackets is at least the count of values and lists it would allocate."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    bound = body.count(b",") + body.count(b"[")
    if bound > max_elements:
        raise invalid(f"JSON Parse error: the request holds up to {bound} values and lists, over "
                      f"the limit of {max_elements} (--max_request_elements): split it")
    # surrogateescape keeps bytes that are not UTF-8 as they are, as TF Serving's parser does;
    # they come back out unchanged for a string tensor.
    text = body.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise invalid(f"JSON Parse error: The document is empty. at offset: {start}")
    try:
        doc, _ = _DECODER.raw_decode(text, start)  # what follows the value is ignored, as TF's
    except json.JSONDecodeError as err:
        raise invalid(f"JSON Parse error: {_rapidjson_text(err)} at offset: {err.pos}") from None
    except RecursionError:  # Python's parser recurses; TF Serving's does not
        doc = _parse_shallow(text, start)
    except ValueError:  # an integer of thousands of digits
        raise invalid("JSON Parse error: Number too big to be stored in double.") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {debug(doc)} Is not object")
    return Body(doc, b"true" in body or b"false" in body, b"Infinity" in body)


class Deep:
    """A value nested deeper than Python's parser goes, kept as its raw text: the request may
    still be answered if nothing reads it (TF Serving ignores keys it does not know)."""

    def __init__(self, raw: str) -> None:
        self.raw = raw


_WHITESPACE = " \t\n\r"


def _parse_shallow(text: str, pos: int) -> dict:
    """The top-level object of a document too deep for ``json``, member by member: each value
    is parsed if it can be, else skipped by a bracket count and kept as ``Deep``."""
    if text[pos] != "{":
        raise invalid("JSON Parse error: the document nests too deep")
    doc, pos = {}, pos + 1
    while True:
        pos = _skip_space(text, pos)
        if text.startswith("}", pos):
            return doc
        if not text.startswith('"', pos):
            raise invalid(f"JSON Parse error: Missing a name for object member. at offset: {pos}")
        key, pos = json.decoder.scanstring(text, pos + 1)
        pos = _skip_space(text, pos)
        if not text.startswith(":", pos):
            raise invalid("JSON Parse error: Missing a colon after a name of object member. "
                          f"at offset: {pos}")
        pos = _skip_space(text, pos + 1)
        try:
            doc[key], pos = _DECODER.raw_decode(text, pos)
        except RecursionError:
            end = _skip_value(text, pos)
            doc[key], pos = Deep(text[pos:end]), end
        except json.JSONDecodeError as err:
            raise invalid(f"JSON Parse error: {_rapidjson_text(err)} at offset: {err.pos}") from None
        pos = _skip_space(text, pos)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("}", pos):
            raise invalid("JSON Parse error: Missing a comma or '}' after an object member. "
                          f"at offset: {pos}")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _skip_value(text: str, pos: int) -> int:
    """The end of the nested list or object at ``pos``, found by counting brackets."""
    depth, in_string, escaped = 0, False, False
    for index in range(pos, len(text)):
        char = text[index]
        if in_string:
            escaped, in_string = (not escaped and char == "\\"), escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return index + 1
    raise invalid(f"JSON Parse error: Missing a comma or ']' after an array element. at offset: "
                  f"{len(text)}")


def _rapidjson_text(err: json.JSONDecodeError) -> str:
    for python, rapidjson in _RAPIDJSON_TEXT.items():
        if err.msg.startswith(python):
            return rapidjson
    if err.msg.startswith("Expecting ',' delimiter"):
        inside = _enclosing(err.doc, err.pos)
        return ("Missing a comma or '}' after an object member." if inside == "{"
                else "Missing a comma or ']' after an array element.")
    return err.msg + "."


def _enclosing(text: str, pos: int) -> str:
    """The bracket that encloses ``pos``, by a scan that skips strings (for one message)."""
    stack, in_string, escaped = [], False, False
    for char in text[:pos]:
        if in_string:
            escaped, in_string = (not escaped and char == "\\"), escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def signature_name(body: Body) -> str:
    """The requested signature; "" (absent or empty) means ``serving_default``."""
    name = body.doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {debug(body.doc)} not formatted correctly. 'signature_name' "
                      "key must be a string value.")
    return name


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
                raise invalid(f"Expecting shape {_shape_text(first_shape)} but got: "
                              f"{_shape_text(shape)}")
        except ServingError as err:
            where = f" key: {name}" if named else ""
            raise invalid(f"Failed to process element: {index}{where} of 'instances' list. "
                          f"Error: {err.code}: {err.message}") from None
    return _array(values, [len(rows), *first_shape], spec)


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
            array = _array(flat, shape, specs[name])
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


def _array(values: list, shape: list[int], spec) -> np.ndarray:
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


# -- answers -----------------------------------------------------------------------------------


def render_predict(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
    """``{"predictions": ...}`` (rows) or ``{"outputs": ...}`` (columns), as TF Serving writes
    them (``MakeJsonFromTensors``): the numbers as its writer prints them."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    texts = {name: _tensor_texts(name, np.asarray(array)) for name, array in outputs.items()}
    if not row_format:
        if len(texts) == 1:
            return b'{"outputs":' + _nest(*next(iter(texts.values()))) + b"}"
        return b'{"outputs":{' + b",".join(
            _key(name) + b":" + _nest(*value) for name, value in texts.items()) + b"}}"
    batch = None
    for name, (flat, shape) in texts.items():
        if not shape:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} "
                          f"expecting: {batch}")
    rows = {name: _split_rows(flat, shape) for name, (flat, shape) in texts.items()}
    if len(rows) == 1:
        return b'{"predictions":[' + b",".join(next(iter(rows.values()))) + b"]}"
    keys = {name: _key(name) + b":" for name in rows}
    return b'{"predictions":[' + b",".join(
        b"{" + b",".join(keys[name] + rows[name][i] for name in rows) + b"}"
        for i in range(batch)) + b"]}"


def render_error(message: str) -> bytes:
    return b'{"error":' + json_string(message.encode("utf-8", "surrogateescape")) + b"}"


def render_json(value) -> bytes:
    """Plain JSON (status, metadata): compact, with TF Serving's bare NaN and Infinity."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _tensor_texts(name: str, array: np.ndarray) -> tuple[list[bytes], list[int]]:
    """Each value's JSON text, flat in row-major order, and the shape to nest them in."""
    flat = array.reshape(-1)
    kind = array.dtype.kind
    if kind == "f" and array.dtype.itemsize in (4, 8):
        texts = decimal_texts(flat)
    elif kind in "iu":
        texts = [str(v).encode() for v in flat.tolist()]
    elif kind == "b":
        texts = [b"true" if v else b"false" for v in flat.tolist()]
    elif kind in "OSU":
        as_b64 = name.endswith("_bytes")
        texts = [_string_text(v, as_b64) for v in flat.tolist()]
    else:
        raise invalid(f"Failed to write JSON value for tensor type: {_numpy_type_name(array)}")
    return texts, list(array.shape)


def _numpy_type_name(array: np.ndarray) -> str:
    names = {"float16": "half", "complex64": "complex64", "complex128": "complex128"}
    return names.get(array.dtype.name, array.dtype.name)


def decimal_texts(flat: np.ndarray) -> list[bytes]:
    """Floats as TF Serving's WriteDecimal prints them: ``%.6g`` when that reads back to the same
    value, else ``%.9g`` (float32) or ``%.17g`` (float64); ``.0`` added to whole numbers; NaN and
    infinities as bare ``NaN``, ``Infinity``, ``-Infinity``."""
    short = [f"{v:.6g}" for v in flat.tolist()]
    back = np.array([float(s) if s[-1].isdigit() else 0.0 for s in short], dtype=flat.dtype)
    exact = (back == flat) | ~np.isfinite(flat)
    digits = ".9g" if flat.dtype.itemsize == 4 else ".17g"
    texts = []
    for value, text, same in zip(flat.tolist(), short, exact.tolist()):
        if value != value:
            texts.append(b"NaN")
            continue
        if value in (float("inf"), float("-inf")):
            texts.append(b"Infinity" if value > 0 else b"-Infinity")
            continue
        if not same:
            text = format(value, digits)
        if "." not in text and "e" not in text:
            text += ".0"
        texts.append(text.encode())
    return texts


def _nest(flat: list[bytes], shape: list[int]) -> bytes:
    """The values in nested JSON lists of ``shape`` (a scalar for shape [])."""
    if not shape:
        return flat[0]
    if 0 in shape:
        return _empty_nest(shape)
    level = flat
    for size in reversed(shape[1:]):
        level = [b"[" + b",".join(level[i:i + size]) + b"]" for i in range(0, len(level), size)]
    return b"[" + b",".join(level) + b"]"


def _empty_nest(shape: list[int]) -> bytes:
    if not shape[0]:
        return b"[]"
    return b"[" + b",".join([_empty_nest(shape[1:])] * shape[0]) + b"]"


def _split_rows(flat: list[bytes], shape: list[int]) -> list[bytes]:
    """Each row (index along dimension 0) of the tensor as its own JSON value."""
    if not shape[0]:
        return []
    per_row = len(flat) // shape[0] if flat else 0
    return [_nest(flat[i * per_row:(i + 1) * per_row], shape[1:]) for i in range(shape[0])]


def _string_text(value, as_b64: bool) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode()
    if as_b64:
        return b'{"b64":"' + base64.b64encode(raw) + b'"}'
    return json_string(raw)


_ESCAPES = {i: f"\\u{i:04X}".encode() for i in range(0x20)}
_ESCAPES.update({0x22: b'\\"', 0x5C: b"\\\\", 0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n",
                 0x0C: b"\\f", 0x0D: b"\\r"})
_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\]')


def json_string(raw: bytes) -> bytes:
    """A JSON string of the bytes as they are (TF Serving writes them raw, UTF-8 or not)."""
    if _NEEDS_ESCAPE.search(raw):
        raw = _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group()[0]], raw)
    return b'"' + raw + b'"'


def _key(name: str) -> bytes:
    return json_string(name.encode("utf-8", "surrogateescape"))


# -- messages ------------------------------------------------------------------------------------


def json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def debug(value) -> str:
    """A value quoted in an error, as TF Serving quotes it: objects indented by 4, lists on one
    line, cut once 256 bytes are written."""
    out: list[str] = []
    _debug(value, 0, out)
    return "".join(out)[:DEBUG_BYTES]


def _debug(value, indent: int, out: list[str]) -> None:
    if sum(map(len, out)) >= DEBUG_BYTES:
        return
    if isinstance(value, Deep):
        out.append(value.raw[:DEBUG_BYTES])
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        out.append("{\n")
        for i, (key, item) in enumerate(value.items()):
            out.append(" " * (indent + 4) + json.dumps(key) + ": ")
            _debug(item, indent + 4, out)
            out.append(",\n" if i < len(value) - 1 else "\n")
            if sum(map(len, out)) >= DEBUG_BYTES:
                return
        out.append(" " * indent + "}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            _debug(item, indent, out)
            if i < len(value) - 1:
                out.append(", ")
            if sum(map(len, out)) >= DEBUG_BYTES:
                return
        out.append("]")
    elif isinstance(value, bool) or value is None:
        out.append(json.dumps(value))
    elif isinstance(value, float):
        out.append(repr(value).replace("e+", "e") if value == value and abs(value) != float("inf")
                   else "")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    else:
        out.append(str(value))


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"
