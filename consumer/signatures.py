"""A SavedModel's signatures, parsed once per imported graph: each input's and output's graph
tensor, dtype and shape. The loader warms a serving session up with them, and the serving
package answers requests through them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from google.protobuf import json_format

from shared.tfcompat import tf  # first: it sets TensorFlow's environment before the import

from tensorflow.core.framework import types_pb2  # noqa: E402


@dataclass(frozen=True)
class TensorSpec:
    name: str  # the graph tensor, e.g. ``inputs/features:0``
    dtype: np.dtype
    dtype_name: str  # ``DT_FLOAT``, for messages
    shape: tuple[int, ...] | None  # -1 for an unknown dim; None for an unknown rank


@dataclass(frozen=True)
class Signature:
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    proto: object  # the SignatureDef, for the metadata endpoint

    @classmethod
    def from_proto(cls, proto) -> Signature:
        return cls({k: _spec(v) for k, v in proto.inputs.items()},
                   {k: _spec(v) for k, v in proto.outputs.items()}, proto)

    def fetches(self, keys: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """The graph tensors of these output keys (all, sorted by key, if None)."""
        return tuple(self.outputs[key].name for key in (keys or sorted(self.outputs)))

    def to_json(self) -> dict:
        return json_format.MessageToDict(self.proto, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)


def _spec(info) -> TensorSpec:
    shape = (None if info.tensor_shape.unknown_rank
             else tuple(d.size for d in info.tensor_shape.dim))
    if info.dtype == types_pb2.DT_INVALID:  # a TF2 export's __saved_model_init_op: an op
        return TensorSpec(info.name, np.dtype(object), "DT_INVALID", shape)
    dtype = tf.dtypes.as_dtype(info.dtype)
    numpy_dtype = np.dtype(object) if dtype == tf.string else np.dtype(dtype.as_numpy_dtype)
    return TensorSpec(info.name, numpy_dtype, types_pb2.DataType.Name(info.dtype), shape)
