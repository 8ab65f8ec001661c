"""TF Serving's JSON for ``:classify`` and ``:regress`` (its ``json_tensor.cc``): examples in,
results out.

A request is ``{"signature_name": ..., "context": {...}, "examples": [{...}, ...]}``. Each feature
value is a scalar or a list: integers (and booleans) make an ``int64_list``, decimals a
``float_list``, strings and ``{"b64": ...}`` a ``bytes_list``; a feature keeps the kind its first
value gave it. The examples reach the model as serialized ``tf.Example`` protos, the context's
bytes before each example's, as TF Serving's ``example_list_with_context`` does: an example's
feature wins over the context's of the same name.
"""

from __future__ import annotations

import numpy as np

from consumer.serving.errors import invalid
from consumer.serving.json_parse import Body, debug, json_type
from consumer.serving.json_render import decimal_texts, json_string
from consumer.serving.json_tensor import b64_decode, is_b64
from shared.tfcompat import tf  # noqa: F401 - first: TensorFlow's environment, then its protos

from tensorflow.core.example import example_pb2, feature_pb2  # noqa: E402

_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def serialized_examples(body: Body) -> np.ndarray:
    """The request's examples as a 1-D array of serialized ``tf.Example`` bytes."""
    doc = body.doc
    context = b""
    if "context" in doc:
        context = _example(doc["context"]).SerializeToString()
    if "examples" not in doc:
        raise invalid(f"JSON Value: {debug(doc)} When method is classify, key 'examples' is "
                      "expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid(f"JSON Value: {debug(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid(f"JSON Value: {debug(doc)} 'examples' value is an empty array")
    serialized = np.empty(len(examples), dtype=object)
    serialized[:] = [context + _example(example).SerializeToString() for example in examples]
    return serialized


def _example(value) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add(item, name, feature)
        example.features.feature[name].CopyFrom(feature)
    return example


def _add(value, name: str, feature: feature_pb2.Feature) -> None:
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64(value)):
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, int) and not -2**63 <= value < 2**64:
        value = float(value)  # past 64 bits, TF Serving's parser reads the token as a double
    if isinstance(value, int):  # booleans too: 1 and 0
        _expect(feature, "int64_list", name)
        if value >= 2**63:
            raise invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, float):
        _expect(feature, "float_list", name)
        feature.float_list.value.append(value)
    elif isinstance(value, str):
        _expect(feature, "bytes_list", name)
        feature.bytes_list.value.append(value.encode("utf-8", "surrogateescape"))
    else:
        _expect(feature, "bytes_list", name)
        feature.bytes_list.value.append(b64_decode(value))


def _expect(feature: feature_pb2.Feature, kind: str, name: str) -> None:
    chosen = feature.WhichOneof("kind")
    if chosen not in (None, kind):
        raise invalid(f"Unexpected element type in feature: {name} expecting type: "
                      f"{_KIND_NAMES[chosen]}")


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
