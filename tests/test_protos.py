"""Tensors between TF Serving's protos and arrays (``consumer.serving.protos``), in process and
against TensorFlow's own conversions as the oracle: ``tf.make_ndarray`` for a request's tensor
(TF's ``Tensor::FromProto``, tensorflow/core/framework/tensor.cc, which TF Serving's
``GetInputValues`` calls), ``tf.make_tensor_proto`` to build requests. The gRPC front's fast
paths (a few values through a list, many through the container's array conversion or a packed
record) must give the same arrays and the same answers on both sides of their threshold.
"""

from __future__ import annotations

import numpy as np
import pytest

from consumer.serving import protos
from consumer.serving.errors import ServingError
from shared.tfcompat import tf

from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402

# On both sides of protos._SMALL (1024): one example, and a batch
SIZES = (5, protos._SMALL + 3)
DTYPES = (np.float32, np.float64, np.int32, np.int64, np.int16, np.int8, np.uint8, np.uint16,
          np.uint32, np.uint64, np.bool_, np.float16)


def _values(dtype, count: int) -> np.ndarray:
    rng = np.random.default_rng(count)
    if dtype == np.bool_:
        return rng.integers(0, 2, count).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True)
    return rng.standard_normal(count).astype(dtype)


def _typed(array: np.ndarray) -> tensor_pb2.TensorProto:
    """``array`` in its typed field (``float_val``...), as a client that does not use
    tensor_content sends it: tf.make_tensor_proto's proto with the content moved out."""
    proto = tf.make_tensor_proto(array)
    field = {np.float16: None}.get(array.dtype.type, protos._READ[proto.dtype][1])
    if field is None:  # half_val holds each float16's bits
        proto.half_val.extend(array.reshape(-1).view(np.uint16).tolist())
    else:
        getattr(proto, field).extend(array.reshape(-1).tolist())
    proto.tensor_content = b""
    return proto


@pytest.mark.parametrize("count", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_a_request_tensor_reads_as_tensorflow_reads_it(dtype, count):
    """Typed fields and tensor_content, a few values and many: the array sent, as TF builds
    it from tensor_content (tf.make_ndarray; from a typed uint16 field TF's Python conversion
    itself fails, so the array sent is the oracle there)."""
    array = _values(dtype, count).reshape(1, count)
    content = tf.make_tensor_proto(array)
    assert np.array_equal(tf.make_ndarray(content), array)
    for proto in (content, _typed(array)):
        got = protos.to_arrays({"x": proto}, 10**6)["x"]
        assert got.dtype == array.dtype and got.shape == (1, count)
        assert np.array_equal(got, array), (got[0, :5], array[0, :5])


def test_int_val_holds_int32_and_a_narrower_dtype_takes_its_low_bits():
    """int_val is an int32 field for DT_INT8..DT_UINT16 (tensor.proto); TF casts each value
    to the tensor's type (``FromProtoField``, tensor.cc), so 300 as int8 is 44. The short path
    for a few values must cast the same way, not refuse the value (numpy 2 raises
    OverflowError for np.array([300], np.int8))."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT8, int_val=[300, -1, 127])
    proto.tensor_shape.dim.add(size=3)
    assert protos.to_array(proto).tolist() == [44, -1, 127]
    proto.dtype = types_pb2.DT_UINT16
    assert protos.to_array(proto).tolist() == [300, 65535, 127]


def test_a_short_typed_field_is_filled_with_its_last_value_and_the_fill_is_bounded():
    """TF's ``FromProtoField``: fewer values than the shape, the last repeated; none, zeros."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0])
    proto.tensor_shape.dim.add(size=4)
    assert protos.to_array(proto).tolist() == [1.0, 2.0, 2.0, 2.0]
    del proto.float_val[:]
    assert protos.to_array(proto).tolist() == [0.0] * 4
    proto.tensor_shape.dim[0].size = protos.MAX_FILL + 1
    with pytest.raises(ServingError, match="repeated for at most"):
        protos.to_array(proto)


@pytest.mark.parametrize("count", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_an_answer_reads_back_as_the_array_it_came_from(dtype, count):
    """An answer's proto, read by TF itself: the same array, its shape in tensor_shape, the
    values in the typed field TF Serving fills (never tensor_content: clients read
    ``outputs[...].float_val``)."""
    array = _values(dtype, count * 2).reshape(2, count)
    response = tensor_pb2.TensorProto()
    protos.to_proto(array, response)
    assert [d.size for d in response.tensor_shape.dim] == [2, count]
    assert response.tensor_content == b""
    back = tf.make_ndarray(response)
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_dtypes_no_client_can_mean_are_refused_before_anything_is_read():
    """DT_INVALID, the resource and variant handles and the _REF types (over 100) are not
    values: a tensor parsing error, as before the dtype check was made a set lookup."""
    for dtype in (types_pb2.DT_INVALID, types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT,
                  types_pb2.DT_FLOAT_REF, 99):
        proto = tensor_pb2.TensorProto(dtype=dtype)
        proto.tensor_shape.dim.add(size=1)
        with pytest.raises(ServingError, match="tensor parsing error: x: dtype .* is not "
                                               "supported"):
            protos.to_array(proto, "x")
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_BFLOAT16)  # held by TF: read by TF
    proto.tensor_shape.dim.add(size=2)
    assert protos.to_array(proto).shape == (2,)
