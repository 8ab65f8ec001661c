"""TF Serving's JSON for ``:classify`` and ``:regress`` (its ``json_tensor.cc``): examples in,
results out.

A request is ``{"signature_name": ..., "context": {...}, "examples": [{...}, ...]}``. Each feature
value is a scalar or a list: integers (and booleans) make an ``int64_list``, decimals a
``float_list``, strings and ``{"b64": ...}`` a ``bytes_list``; a feature keeps the kind its first
value gave it. The examples reach the model as serialized ``tf.Example`` protos, the context's
bytes before each example's, as TF Serving's ``example_list_with_context`` does: an example's
feature wins over the context's of the same name.

The protos are written here, in protobuf's wire format, not built with TF's ``example_pb2``:
this module runs in the parse process too (``consumer.serving.offload``), which never imports
TensorFlow. ``example.proto`` and ``feature.proto`` are small and stable: an Example is field 1,
Features; Features is field 1, a map of name to Feature; a Feature is field 1 (BytesList), 2
(FloatList) or 3 (Int64List), each a field 1 of values, packed for floats and integers.
"""

from __future__ import annotations

import struct

import numpy as np

from consumer.serving import json_parse
from consumer.serving.errors import invalid
from consumer.serving.json_parse import Body, debug, json_type
from consumer.serving.json_render import decimal_texts, json_string
from consumer.serving.json_tensor import b64_decode, is_b64

_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}
_KIND_FIELDS = {"bytes_list": 1, "float_list": 2, "int64_list": 3}  # Feature's oneof, by number
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def parse_examples(body: bytes, max_elements: int) -> tuple[str, np.ndarray]:
    """(signature name, serialized examples) of a classify or regress body, in TF Serving's
    order (``FillClassifyRegressRequestFromJson``): parse, signature name, context, examples.
    Run here or in the parse process; the model is looked up afterwards, as TF Serving does."""
    parsed = json_parse.parse(body, max_elements)
    return json_parse.signature_name(parsed), serialized_examples(parsed)


def serialized_examples(body: Body) -> np.ndarray:
    """The request's examples as a 1-D array of serialized ``tf.Example`` bytes."""
    doc, keys = body.doc, {}
    context = b""
    if "context" in doc:
        context = _example(doc["context"], keys)
    if "examples" not in doc:
        raise invalid(f"JSON Value: {debug(doc)} When method is classify, key 'examples' is "
                      "expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {debug(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {debug(doc)} 'examples' value is an empty array")
    serialized = np.empty(len(examples), dtype=object)
    serialized[:] = [context + _example(example, keys) for example in examples]
    return serialized


def _example(value, keys: dict[str, bytes]) -> bytes:
    """One JSON object as a serialized ``tf.Example``; ``keys`` caches each feature name's
    serialized map key (a body names the same few features in every example)."""
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type(value)}")
    entries = []
    for name, content in value.items():
        key = keys.get(name)
        if key is None:
            key = keys[name] = _field(1, name.encode("utf-8", "surrogateescape"))
        entries.append(_field(1, key + _field(2, _feature(name, content))))
    return _field(1, b"".join(entries)) if entries else b""  # no feature: an empty Example


# A feature of one float: Feature field 2 (FloatList, 6 bytes), its field 1 (packed, 4 bytes).
_ONE_FLOAT, _FLOAT32 = b"\x12\x06\n\x04", struct.Struct("<f")


def _feature(name: str, content) -> bytes:
    """A feature's value or values as a serialized ``Feature`` of the kind its first value
    gives."""
    if type(content) is float and abs(content) <= _FLOAT32_MAX:  # the common case, at once
        return _ONE_FLOAT + _FLOAT32.pack(content)
    values = content if isinstance(content, list) else [content]
    kind = None
    for value in values:
        kind = _kind(value, name, kind)
    if kind is None:
        return b""
    if kind == "bytes_list":
        payload = b"".join(_field(1, _bytes(value)) for value in values)
    elif kind == "float_list":
        payload = _field(1, _floats(values))
    else:
        payload = _field(1, b"".join(_varint(int(value) & 0xFFFFFFFFFFFFFFFF) for value in values))
    return _field(_KIND_FIELDS[kind], payload)


def _kind(value, name: str, kind: str | None) -> str:
    """The list ``value`` goes in, checked as TF Serving's ``AddValueToFeature`` checks it."""
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64(value)):
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, int) and not -2**63 <= value < 2**64:
        value = float(value)  # past 64 bits, TF Serving's parser reads the token as a double
    wanted = ("int64_list" if isinstance(value, int) else  # booleans too: 1 and 0
              "float_list" if isinstance(value, float) else "bytes_list")
    if kind not in (None, wanted):
        raise invalid(f"Unexpected element type in feature: {name} expecting type: "
                      f"{_KIND_NAMES[kind]}")
    if wanted == "int64_list" and value >= 2**63:
        raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    return wanted


def _bytes(value) -> bytes:
    if isinstance(value, str):  # bytes that were not UTF-8 go to the model as they came
        return value.encode("utf-8", "surrogateescape")
    return b64_decode(value)


def _floats(values: list) -> bytes:
    """Packed float32s; a double past float32's range becomes infinite, as protobuf makes it."""
    try:
        return struct.pack(f"<{len(values)}f", *values)
    except OverflowError:
        with np.errstate(over="ignore"):
            return np.asarray(values, dtype=np.float64).astype("<f4").tobytes()


_SMALL = [bytes((number,)) for number in range(0x80)]  # a varint under 128: one byte


def _varint(number: int) -> bytes:
    if number < 0x80:
        return _SMALL[number]
    out = bytearray()
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (numbers 1 to 15): its tag, its length, its bytes."""
    size = len(payload)
    return _SMALL[number << 3 | 2] + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


def render_classification(labels: list[list[bytes]], scores: list[list[float]]) -> bytes:
    """``{"results": [[[label, score], ...], ...]}``: one list per example."""
    if not labels:
        raise invalid("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for row_labels, row_scores in zip(labels, scores):
        texts = decimal_texts(np.asarray(row_scores, dtype=np.float32))
        rows.append("[" + ",".join(
            "[" + json_string(label.decode("utf-8", "surrogateescape")) + "," + text + "]"
            for label, text in zip(row_labels, texts)) + "]")
    return ('{"results":[' + ",".join(rows) + "]}").encode("utf-8", "surrogateescape")


def render_regression(values: np.ndarray) -> bytes:
    """``{"results": [value, ...]}``: one value per example."""
    if not len(values):
        raise invalid("Cannot convert empty RegressionResults to JSON")
    return ('{"results":[' + ",".join(decimal_texts(np.asarray(values, np.float32))) +
            "]}").encode()
