"""TF Serving's protos and our arrays: tensors both ways, and an ``Input`` of tf.Examples as the
serialized strings a classify or regress signature reads. Used by the gRPC front and by the
warm-up replay.

A request's ``TensorProto`` is read by TF's own rules (``Tensor::FromProto``,
tensorflow/core/framework/tensor.cc; TF Serving calls it through ``GetInputValues``,
tensorflow/cc/saved_model/util.cc, and answers INVALID_ARGUMENT "tensor parsing error: <alias>"
when it fails):

- the shape is valid as ``TensorShape::IsValid`` says (tensor_shape.cc): at most 254 dimensions,
  none negative, a product that fits in int64;
- the dtype is one TF can hold (DT_INVALID, reference types, and here DT_RESOURCE and DT_VARIANT,
  which no client can mean as a value, are refused);
- ``tensor_content``, when set, holds exactly the bytes the shape and dtype need (``Helper<T>::
  Decode``; strings as ``DecodeStringList``, tensor_coding.cc: varint32 lengths, then the bytes);
- else the typed field (``float_val``...) gives the values: extra ones are ignored, and fewer are
  filled out with the last one, or zeros when there is none (``FromProtoField``).

What TF does not bound, we do, and before anything is allocated: the elements a request's tensors
declare, against ``--max_request_elements``; and the fill, so that a shape that declares far more
than the proto carries (one ``float_val`` and shape ``[2**40]``) is refused rather than built.
Every other array costs about what its proto carries: ``tensor_content`` is read in place
(``np.frombuffer``), typed fields through the container's own array conversion, never a list of
Python numbers.
"""

from __future__ import annotations

import math

import numpy as np

from consumer.serving.errors import invalid
from consumer.serving.json_parse import MAX_ELEMENTS
from shared.tfcompat import tf

from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402

MAX_DIMS = 254  # TensorShape's kMaxDims (tensor_shape.h)
MAX_FILL = MAX_ELEMENTS  # elements a request's tensors may declare beyond the values they carry,
#                          all together, whatever --max_request_elements allows: a fill costs
#                          memory the request did not bring
_INT64_MAX = 2**63 - 1
_CHUNK = 1 << 16  # values turned into Python numbers at once, where protobuf needs them
# Up to this many values, a typed field is read and written as a list of Python numbers: for a
# few values that is faster than the container's array conversion or a packed record (a
# one-example predict: ~3x), and the list costs at most ~36 KiB
_SMALL = 1024

# TF dtype -> (numpy dtype, the typed field its values come in), for the dtypes read here; the
# rest TF can hold (bfloat16, quantized, float8, int4...) go through tf.make_ndarray once their
# size is checked.
_READ = {types_pb2.DT_FLOAT: (np.float32, "float_val"),
         types_pb2.DT_DOUBLE: (np.float64, "double_val"),
         types_pb2.DT_INT32: (np.int32, "int_val"), types_pb2.DT_INT16: (np.int16, "int_val"),
         types_pb2.DT_INT8: (np.int8, "int_val"), types_pb2.DT_UINT8: (np.uint8, "int_val"),
         types_pb2.DT_UINT16: (np.uint16, "int_val"),
         types_pb2.DT_INT64: (np.int64, "int64_val"),
         types_pb2.DT_UINT32: (np.uint32, "uint32_val"),
         types_pb2.DT_UINT64: (np.uint64, "uint64_val"),
         types_pb2.DT_BOOL: (np.bool_, "bool_val"),
         types_pb2.DT_HALF: (np.float16, "half_val"),
         types_pb2.DT_COMPLEX64: (np.complex64, "scomplex_val"),
         types_pb2.DT_COMPLEX128: (np.complex128, "dcomplex_val"),
         types_pb2.DT_STRING: (np.object_, "string_val")}
# The dtype each typed field holds its values in (int_val is int32 whatever the tensor's dtype)
_NATURAL = {dtype: {"float_val": np.float32, "double_val": np.float64, "int_val": np.int32,
                    "int64_val": np.int64, "uint32_val": np.uint32, "uint64_val": np.uint64,
                    "bool_val": np.bool_}.get(field) for dtype, (_, field) in _READ.items()}
_REFUSED = {types_pb2.DT_INVALID, types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT}
# The dtypes a request may name, once: DataType.values() builds a new list at each call (~70 us)
_HELD = frozenset(types_pb2.DataType.values()) - _REFUSED - {d for d in
                                                              types_pb2.DataType.values()
                                                              if d > 100}  # the _REF types

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
# float_val and double_val as one packed field of raw little-endian values: upb parses it in C,
# where extending the field from Python makes a Python float of each value
_PACKED = {"float_val": (tensor_pb2.TensorProto.FLOAT_VAL_FIELD_NUMBER, "<f4"),
           "double_val": (tensor_pb2.TensorProto.DOUBLE_VAL_FIELD_NUMBER, "<f8")}


def shape_of(proto: tensor_pb2.TensorProto, name: str = "") -> tuple[int, ...]:
    """The tensor's shape, valid as TF's ``TensorShape::IsValid`` requires; nothing is
    allocated."""
    dims = tuple([d.size for d in proto.tensor_shape.dim])
    if len(dims) > MAX_DIMS:
        raise _parse_error(name, f"{len(dims)} dimensions, over TF's {MAX_DIMS}")
    if dims and min(dims) < 0:
        raise _parse_error(name, f"shape {_text(dims)} has a negative dimension")
    if math.prod(dims) > _INT64_MAX:
        raise _parse_error(name, f"shape {_text(dims)} has more elements than int64 counts")
    return dims


def to_arrays(inputs, max_elements: int | None = None) -> dict[str, np.ndarray]:
    """A request's ``inputs`` map as arrays. Every tensor's shape and dtype are checked, and
    the elements they declare in all against ``max_elements``, before any array is built."""
    tensors = [(key, proto, shape_of(proto, key)) for key, proto in inputs.items()]
    total = sum(math.prod(shape) for _, _, shape in tensors)
    if max_elements is not None and total > max_elements:
        raise invalid(f"the request's tensors declare {total} elements, over the limit of "
                      f"{max_elements} (--max_request_elements): split it")
    fill = Fill()
    return {key: to_array(proto, key, max_elements, fill, shape) for key, proto, shape in tensors}


class Fill:
    """What a request's tensors may still declare beyond the values they carry (TF repeats the
    last value), all of them together."""

    def __init__(self, elements: int = MAX_FILL) -> None:
        self.left = elements

    def take(self, elements: int, name: str, count: int, carried: int) -> None:
        if elements > self.left:
            raise _parse_error(name, f"its shape declares {count} elements and it carries "
                                     f"{carried} values: the last is repeated for at most "
                                     f"{MAX_FILL} elements in a request, no further")
        self.left -= elements


def to_array(proto: tensor_pb2.TensorProto, name: str = "", max_elements: int | None = None,
             fill: Fill | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A request's tensor as an array of its own dtype (strings as bytes objects), by TF's
    rules (the module's docstring); ``max_elements`` bounds the elements it may declare, and
    ``fill`` (its own by default) what it may declare beyond the values it carries. ``shape``:
    ``shape_of(proto)`` if the caller has it already."""
    fill = fill if fill is not None else Fill()
    shape = shape_of(proto, name) if shape is None else shape
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise _parse_error(name, f"shape {_text(shape)} declares {count} elements, over the "
                                 f"limit of {max_elements} (--max_request_elements)")
    dtype = proto.dtype
    if dtype not in _HELD:
        raise _parse_error(name, f"dtype {_dtype_name(dtype)} is not supported")
    content = proto.tensor_content  # read once: each read is a copy
    if dtype not in _READ:
        return _rare(proto, name, shape, count, content, fill)
    numpy_dtype, field = _READ[dtype]
    if content and count > 0:
        flat = _from_content(content, numpy_dtype, count, name)
    else:
        flat = _from_field(getattr(proto, field), dtype, numpy_dtype, count, fill, name)
    return flat.reshape(shape)


def _from_content(content: bytes, numpy_dtype, count: int, name: str) -> np.ndarray:
    if numpy_dtype is np.object_:
        return _decode_strings(content, count, name)
    need = count * np.dtype(numpy_dtype).itemsize
    if len(content) != need:
        raise _parse_error(name, f"tensor_content holds {len(content)} bytes where its shape "
                                 f"and dtype need {need}")
    return np.frombuffer(content, dtype=numpy_dtype)  # a read-only view: no copy


def _decode_strings(content: bytes, count: int, name: str) -> np.ndarray:
    """TF's ``DecodeStringList``: ``count`` varint32 lengths, then the strings' bytes, which
    must add up to exactly what is left."""
    lengths, at = [], 0
    for _ in range(count):
        value, shift = 0, 0
        while True:
            if at >= len(content) or shift > 28:
                raise _parse_error(name, "tensor_content is not a list of strings")
            byte = content[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        lengths.append(value)
    if sum(lengths) != len(content) - at:
        raise _parse_error(name, "tensor_content is not a list of strings")
    out = np.empty(count, dtype=object)
    for index, length in enumerate(lengths):
        out[index] = content[at:at + length]
        at += length
    return out


def _from_field(values, dtype: int, numpy_dtype, count: int, fill: Fill,
                name: str) -> np.ndarray:
    """``FromProtoField``: the first ``count`` values, the last repeated if there are fewer,
    zeros if there are none; a fill past what ``fill`` allows is refused, not built."""
    carried = len(values) // 2 if dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128) \
        else len(values)
    if carried < count:
        fill.take(count - carried, name, count, carried)
    if dtype == types_pb2.DT_STRING:
        flat = np.empty(count, dtype=object)
        taken = list(values[:count])
        flat[:len(taken)] = taken
        flat[len(taken):] = taken[-1] if taken else b""
        return flat
    if count == 0:
        return np.empty(0, numpy_dtype)
    if carried == 0:
        return np.zeros(count, numpy_dtype)
    have = _typed(values, dtype, numpy_dtype, min(carried, count))
    if carried >= count:
        return have
    flat = np.empty(count, numpy_dtype)
    flat[:carried] = have
    flat[carried:] = have[-1]
    return flat


def _typed(values, dtype: int, numpy_dtype, count: int) -> np.ndarray:
    """The first ``count`` values of a typed field, converted in C by the container's
    ``__array__`` (int_val holds int8..uint16, half_val a float16's bits, complex fields
    pairs)."""
    if dtype == types_pb2.DT_HALF:
        return np.asarray(values, np.int32)[:count].astype(np.uint16).view(np.float16)
    if dtype == types_pb2.DT_COMPLEX64:
        return np.asarray(values, np.float32)[:2 * count].view(np.complex64)
    if dtype == types_pb2.DT_COMPLEX128:
        return np.asarray(values, np.float64)[:2 * count].view(np.complex128)
    if count <= _SMALL:  # as the field holds them (int_val: int32 for int8..uint16), then cast
        return np.array(values[:count], _NATURAL[dtype]).astype(numpy_dtype, copy=False)
    native = np.asarray(values)
    return native[:count].astype(numpy_dtype, copy=False)


def _rare(proto, name: str, shape: tuple[int, ...], count: int, content: bytes,
          fill: Fill) -> np.ndarray:
    """A dtype TF holds and this module does not read itself (bfloat16, quantized, float8,
    int4...): its size is checked here, then TF's own conversion builds it."""
    try:
        itemsize = tf.as_dtype(proto.dtype).size
    except (TypeError, ValueError):
        raise _parse_error(name, f"dtype {_dtype_name(proto.dtype)} is not supported") from None
    if content and count > 0 and len(content) != count * itemsize:
        raise _parse_error(name, f"tensor_content holds {len(content)} bytes where its shape "
                                 f"and dtype need {count * itemsize}")
    if not content:  # typed fields, counted as if all were filled
        fill.take(count, name, count, 0)
    try:
        return np.asarray(tf.make_ndarray(proto)).reshape(shape)
    except (TypeError, ValueError, KeyError) as err:
        raise _parse_error(name, str(err)) from None


def _parse_error(name: str, reason: str):
    # TF Serving's own words (saved_model/util.cc), then why
    return invalid(f"tensor parsing error: {name}: {reason}" if name
                   else f"tensor parsing error: {reason}")


def _text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _dtype_name(dtype: int) -> str:
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return str(dtype)


# -- answers -----------------------------------------------------------------------------------


def to_proto(array: np.ndarray, out: tensor_pb2.TensorProto | None = None
             ) -> tensor_pb2.TensorProto:
    """An answer's array as TF Serving writes it (``AsProtoField``), into ``out`` if given (a
    response's own ``outputs[key]``, so the values are not copied once more)."""
    array = np.asarray(array)
    proto = out if out is not None else tensor_pb2.TensorProto()
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add(size=size)
    flat = array.reshape(-1)
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode()
                                for v in flat.tolist())
        return proto
    if array.dtype == np.float16:
        proto.dtype = types_pb2.DT_HALF
        _extend(proto.half_val, flat.view(np.uint16))
        return proto
    field = _FIELDS.get(array.dtype)
    if field is None:  # complex and the rest: TF's own conversion
        proto.CopyFrom(tf.make_tensor_proto(array))
        return proto
    proto.dtype = field[1]
    if flat.size <= _SMALL:
        getattr(proto, field[0]).extend(flat.tolist())
    elif field[0] in _PACKED:
        _merge_packed(proto, *_PACKED[field[0]], flat)
    else:
        _extend(getattr(proto, field[0]), flat)
    return proto


def _merge_packed(proto, number: int, little: str, flat: np.ndarray) -> None:
    """``flat`` into the field ``number`` as one packed record: its tag and length, then the
    values written once into the buffer protobuf parses (no concatenated copy)."""
    header = _varint(number << 3 | 2) + _varint(flat.size * np.dtype(little).itemsize)
    record = bytearray(len(header) + flat.size * np.dtype(little).itemsize)
    record[:len(header)] = header
    np.frombuffer(record, dtype=little, offset=len(header))[:] = flat
    proto.MergeFromString(memoryview(record))


def _extend(values, flat: np.ndarray) -> None:
    # a chunk at a time: a list of Python numbers for the whole array would cost ~36 bytes each
    for start in range(0, len(flat), _CHUNK):
        values.extend(flat[start:start + _CHUNK].tolist())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


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
