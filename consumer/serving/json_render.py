"""TF Serving's JSON answers (its ``util/json_tensor.cc``): output arrays to ``predictions`` or
``outputs``, errors to ``{"error": ...}``, with numbers written as its writer writes them.

- Floats: ``%.6g`` when that reads back to the same value, else ``%.9g`` (float32) or ``%.17g``
  (float64); ``.0`` added to a whole number; NaN and infinities as bare ``NaN``, ``Infinity``,
  ``-Infinity``. So 9000000 is ``9e+06`` and 0.2 as a float32 is ``0.2``, not
  ``0.20000000298023224``.
- Strings are written as their bytes are; an output named ``*_bytes`` as ``{"b64": ...}``.
- Row format: one entry per row of dimension 0, an object per row for several outputs (they must
  share dimension 0). Columnar: the tensor, or an object keyed by output name.

Only numpy here: it runs in the server and in its parse process alike.
"""

from __future__ import annotations

import base64
import json
import re
import struct

import numpy as np

from consumer.serving.errors import invalid, printable

_SPECIAL = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_FLOAT32 = struct.Struct("f")
SMALL = 64  # fewer values than this are printed one by one; more, with numpy's help


def render_predict(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
    """``{"predictions": ...}`` (rows) or ``{"outputs": ...}`` (columns)."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    texts = {name: _tensor_texts(name, np.asarray(array)) for name, array in outputs.items()}
    if not row_format:
        if len(texts) == 1:
            return _encode('{"outputs":' + _nest(*next(iter(texts.values()))) + "}")
        return _encode('{"outputs":{' + ",".join(
            _key(name) + ":" + _nest(*value) for name, value in texts.items()) + "}}")
    batch = None
    for name, (_, shape) in texts.items():
        if not shape:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} "
                          f"expecting: {batch}")
    rows = {name: _split_rows(flat, shape) for name, (flat, shape) in texts.items()}
    if len(rows) == 1:
        return _encode('{"predictions":[' + ",".join(next(iter(rows.values()))) + "]}")
    keys = {name: _key(name) + ":" for name in rows}
    return _encode('{"predictions":[' + ",".join(
        "{" + ",".join(keys[name] + rows[name][i] for name in rows) + "}"
        for i in range(batch)) + "]}")


def render_error(message: str) -> bytes:
    """``{"error": "..."}`` on one line of valid UTF-8, whatever the message quotes: newlines and
    control characters escaped, bytes that were not UTF-8 written out (``errors.printable``).
    TF Serving writes the same object with rapidjson's PrettyWriter, on three lines, and its
    message's bytes raw (``json_tensor.cc``, ``MakeJsonFromStatus``)."""
    return ('{"error":' + json_string(printable(message)) + "}").encode()


def render_json(value) -> bytes:
    """Plain JSON (status, metadata): compact, with TF Serving's bare NaN and Infinity."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # bytes that were not UTF-8 go out as they came


def _tensor_texts(name: str, array: np.ndarray) -> tuple[list[str], list[int]]:
    """Each value's JSON text, flat in row-major order, and the shape to nest them in."""
    flat = array.reshape(-1)
    kind = array.dtype.kind
    if kind == "f" and array.dtype.itemsize in (4, 8):
        texts = decimal_texts(flat)
    elif kind in "iu":
        texts = list(map(str, flat.tolist()))
    elif kind == "b":
        texts = ["true" if v else "false" for v in flat.tolist()]
    elif kind in "OSU":
        texts = [_string_text(v, name.endswith("_bytes")) for v in flat.tolist()]
    else:
        names = {"float16": "half", "complex64": "complex64", "complex128": "complex128"}
        raise invalid("Failed to write JSON value for tensor type: "
                      f"{names.get(array.dtype.name, array.dtype.name)}")
    return texts, list(array.shape)


def decimal_texts(flat: np.ndarray) -> list[str]:
    """Floats as TF Serving's WriteDecimal prints them (see the module's docstring)."""
    values = flat.tolist()
    if len(values) <= SMALL:
        return [_decimal(v, flat.dtype.itemsize) for v in values]
    texts = [f"{v:.6g}" for v in values]
    back = np.array(texts, dtype=flat.dtype)  # numpy reads "nan" and "inf" too
    with np.errstate(invalid="ignore"):
        redo = np.flatnonzero((back != flat) & np.isfinite(flat))
    digits = ".9g" if flat.dtype.itemsize == 4 else ".17g"
    for index in redo.tolist():
        texts[index] = format(values[index], digits)
    return [t if "." in t or "e" in t else _SPECIAL.get(t, t + ".0") for t in texts]


def _decimal(value: float, size: int) -> str:
    """One float, as ``decimal_texts`` prints it, without numpy's per-call cost."""
    text = f"{value:.6g}"
    if text[-1].isdigit():
        back = float(text)
        if size == 4:
            back = _FLOAT32.unpack(_FLOAT32.pack(back))[0]  # read back as a float32
        if back != value:
            text = format(value, ".9g" if size == 4 else ".17g")
    return text if "." in text or "e" in text else _SPECIAL.get(text, text + ".0")


def _nest(flat: list[str], shape: list[int]) -> str:
    """The values in nested JSON lists of ``shape`` (a scalar for shape [])."""
    if not shape:
        return flat[0]
    if 0 in shape:
        return _empty_nest(shape)
    level = flat
    for size in reversed(shape[1:]):
        level = ["[" + ",".join(level[i:i + size]) + "]" for i in range(0, len(level), size)]
    return "[" + ",".join(level) + "]"


def _empty_nest(shape: list[int]) -> str:
    if not shape[0]:
        return "[]"
    return "[" + ",".join([_empty_nest(shape[1:])] * shape[0]) + "]"


def _split_rows(flat: list[str], shape: list[int]) -> list[str]:
    """Each row (index along dimension 0) of the tensor as its own JSON value."""
    if not shape[0]:
        return []
    if len(shape) == 1:
        return flat
    per_row = len(flat) // shape[0]
    return [_nest(flat[i * per_row:(i + 1) * per_row], shape[1:]) for i in range(shape[0])]


def _string_text(value, as_b64: bool) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode()
    if as_b64:
        return '{"b64":"' + base64.b64encode(raw).decode() + '"}'
    return json_string(raw.decode("utf-8", "surrogateescape"))


_ESCAPES = {chr(i): f"\\u{i:04X}" for i in range(0x20)}
_ESCAPES.update({'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
                 "\r": "\\r"})
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')


def json_string(text: str) -> str:
    """A JSON string, escaped as rapidjson escapes: quotes, backslashes and control characters
    only; anything else (non-ASCII, bytes that are not UTF-8) is written as it is."""
    return '"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group()], text) + '"'


def _key(name: str) -> str:
    return json_string(name)
