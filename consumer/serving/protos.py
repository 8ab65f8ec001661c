"""TF Serving's protos and our arrays: tensors both ways, and an ``Input`` of tf.Examples as the
serialized strings a classify or regress signature reads. Used by the gRPC front and by the
warm-up replay."""

from __future__ import annotations

import numpy as np

from consumer.serving.errors import ServingError, invalid
from shared.tfcompat import tf

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402

# The typed field TF Serving fills for each dtype (``AsProtoField``), never ``tensor_content``:
# clients read ``outputs["y"].float_val``.
_FIELDS = {np.dtype(np.float32): ("float_val", types_pb2.DT_FLOAT),
           np.dtype(np.float64): ("double_val", types_pb2.DT_DOUBLE),
           np.dtype(np.int32): ("int_val", types_pb2.DT_INT32),
           np.dtype(np.int16): ("int_val", types_pb2.DT_INT16),
           np.dtype(np.int8): ("int_val", types_pb2.DT_INT8),
           np.dtype(np.uint8): ("int_val", types_pb2.DT_UINT8),
           np.dtype(np.uint16): ("int_val", types_pb2.DT_UINT16),
           np.dtype(np.int64): ("int64_val", types_pb2.DT_INT64),
           np.dtype(np.uint32): ("uint32_val", types_pb2.DT_UINT32),
           np.dtype(np.uint64): ("uint64_val", types_pb2.DT_UINT64),
           np.dtype(np.bool_): ("bool_val", types_pb2.DT_BOOL)}


def to_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A request's tensor as an array of its own dtype (strings as bytes objects)."""
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as err:
        raise invalid(f"tensor parsing error: {err}") from None


def to_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    array = np.asarray(array)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape])
    if array.dtype.kind in "OSU":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist()]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape,
                                      string_val=values)
    if array.dtype == np.float16:
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF, tensor_shape=shape,
                                      half_val=array.reshape(-1).view(np.uint16).tolist())
    field = _FIELDS.get(array.dtype)
    if field is None:  # complex and the rest: TF's own conversion
        return tf.make_tensor_proto(array)
    proto = tensor_pb2.TensorProto(dtype=field[1], tensor_shape=shape)
    getattr(proto, field[0]).extend(array.reshape(-1).tolist())
    return proto


def serialized_examples(request_input) -> np.ndarray:
    """An ``Input`` (example_list, or example_list_with_context) as the serialized examples a
    signature reads: with a context, its bytes come before each example's, as TF Serving
    concatenates them, so an example's feature wins over the context's of the same name."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples, context = request_input.example_list.examples, b""
    elif kind == "example_list_with_context":
        examples = request_input.example_list_with_context.examples
        context = request_input.example_list_with_context.context.SerializeToString()
    else:
        examples, context = [], b""
    if not examples:
        raise invalid("Input is empty.")
    serialized = np.empty(len(examples), dtype=object)
    serialized[:] = [context + example.SerializeToString() for example in examples]
    return serialized


def require(condition: bool, code: str, message: str) -> None:
    if not condition:
        raise ServingError(code, message)
