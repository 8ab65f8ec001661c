"""TF Serving's ``BatchingParameters`` (``--batching_parameters_file``): its text format read
and checked as TF Serving reads and checks it, with its defaults for the fields left out. The
batcher that runs with them is ``consumer.serving.batching``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2


MAX_BATCH_THREADS = 256  # threads a batching parameters file may ask for (each one is real)


@dataclass(frozen=True)
class Parameters:
    """TF Serving's BatchingParameters, with its defaults for the fields left out."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 2
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False


def _batching_parameters_class():
    """The ``BatchingParameters`` message of TF Serving's ``session_bundle_config.proto``,
    which the tensorflow-serving-api package does not ship: built here with its field names,
    numbers and wrapper types, so that its text format reads as TF Serving reads it."""
    file = descriptor_pb2.FileDescriptorProto(
        name="tf_handoff/batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    fields = [("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
              ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
              ("thread_pool_name", 5, "StringValue"),
              ("enable_large_batch_splitting", 8, "BoolValue"),
              ("max_execution_batch_size", 9, "Int64Value")]
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for name, number, wrapper in fields:
        message.field.add(name=name, number=number, label=optional,
                          type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                          type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=optional,
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def parse_parameters(text: str, where: str) -> Parameters:
    """A ``--batching_parameters_file``'s text, checked as TF Serving checks it (and for an
    increasing ``allowed_batch_sizes``, which its docs require); ``ValueError``, one line."""
    message = _batching_parameters_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise ValueError(f"Invalid protobuf file: '{where}': {err}") from None
    values = {name: getattr(message, name).value for name in
              ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
               "num_batch_threads") if message.HasField(name)}
    parameters = Parameters(**values, allowed_batch_sizes=tuple(message.allowed_batch_sizes),
                            pad_variable_length_inputs=message.pad_variable_length_inputs)
    for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(parameters, name) < 1:
            raise ValueError(f"{where}: {name} must be at least 1")
    if parameters.num_batch_threads > MAX_BATCH_THREADS:  # each is a thread: checked first
        raise ValueError(f"{where}: num_batch_threads {parameters.num_batch_threads} is over "
                         f"the limit of {MAX_BATCH_THREADS}")
    sizes = parameters.allowed_batch_sizes
    if sizes and sizes[-1] != parameters.max_batch_size:
        raise ValueError(f"Last entry in allowed_batch_sizes must match max_batch_size; last "
                         f"entry was {sizes[-1]}; expected {parameters.max_batch_size}")
    if any(a >= b for a, b in zip(sizes, sizes[1:])) or (sizes and sizes[0] < 1):
        raise ValueError(f"{where}: allowed_batch_sizes must increase, from 1 or more")
    return parameters


def load_parameters(path: Path | None) -> Parameters:
    if path is None:
        return Parameters()
    try:
        return parse_parameters(Path(path).read_text(), str(path))
    except OSError as err:
        raise ValueError(f"cannot read batching parameters file {path}: {err.strerror}") from None
