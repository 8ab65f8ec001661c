"""Server-side batching, as TF Serving configures and runs it (``--enable_batching``,
``--batching_parameters_file``): concurrent requests for the same version, signature, inputs and
outputs are merged into one ``Session.run`` and split back.

- A request joins the batch being formed for its version and tensors, if it fits; a batch runs
  when it is full, when ``batch_timeout_micros`` have passed since its first request, or (with a
  timeout of 0) as soon as a batch thread is free. Requests are concatenated along dimension 0,
  in the order they came; each gets its own rows back.
- A batch never mixes versions: each version has its own batches, and a swap closes the batch
  being formed for the version it replaces, which runs at once.
- ``allowed_batch_sizes``: a batch is padded up to the next allowed size with copies of the
  last request's first row. ``pad_variable_length_inputs``: inputs whose dimensions after the
  first differ are padded up to the largest, with that tensor's own first value (TF Serving's
  rule). One failure fails the whole batch, as in TF Serving.
- A full queue (``max_enqueued_batches`` batches waiting) answers UNAVAILABLE (503) at once.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2

from consumer.loader import Loaded
from consumer.serving import inference
from consumer.serving.errors import ServingError, invalid


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


@dataclass
class _Task:
    feeds: list[np.ndarray]
    size: int
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list | None = None
    error: Exception | None = None


@dataclass
class _Batch:
    key: tuple
    loaded: Loaded
    feed_names: tuple[str, ...]
    fetches: tuple[str, ...]
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    opened: float = 0.0
    closed: bool = False  # a swap closed it: it runs at once, whatever its size


class Batcher:
    """The batch queues of every version and tensors, and the threads that run them."""

    def __init__(self, parameters: Parameters, metrics=None) -> None:
        self.parameters = parameters
        self.metrics = metrics
        self._pending: list[_Batch] = []  # oldest first; the last per key is the one forming
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(parameters.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, loaded: Loaded, feeds: dict[str, np.ndarray], fetches: tuple[str, ...]) -> list:
        """A request's run, in a batch with others: its outputs, its rows only."""
        arrays = [np.asarray(a) for a in feeds.values()]
        size = _task_size(arrays)
        if size > self.parameters.max_batch_size:
            raise invalid(f"Task size {size} is larger than maximum input batch size "
                          f"{self.parameters.max_batch_size}")
        task = _Task(arrays, size)
        key = (id(loaded), tuple(feeds), fetches)
        with self._cond:
            batch = next((b for b in reversed(self._pending) if b.key == key), None)
            if batch is None or batch.closed or batch.size + size > self.parameters.max_batch_size:
                if len(self._pending) >= self.parameters.max_enqueued_batches:
                    raise ServingError(
                        "UNAVAILABLE", "The batch scheduling queue to which this task was "
                        f"submitted is full; currently {len(self._pending)} batches enqueued and "
                        f"max_enqueued_batches is {self.parameters.max_enqueued_batches}")
                batch = _Batch(key, loaded, tuple(feeds), fetches, opened=time.monotonic())
                self._pending.append(batch)
            batch.tasks.append(task)
            batch.size += size
            self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def close_version(self, loaded_ids: set[int]) -> None:
        """Versions swapped out: the batches forming for them run now, not at their timeout."""
        with self._cond:
            for batch in self._pending:
                if batch.key[0] in loaded_ids:
                    batch.closed = True
            self._cond.notify_all()

    def _ready(self, now: float) -> tuple[_Batch | None, float | None]:
        """The oldest batch that may run now, or None and how long until one may."""
        timeout = self.parameters.batch_timeout_micros / 1e6
        wait = None
        for batch in self._pending:
            due = batch.opened + timeout
            if batch.closed or batch.size >= self.parameters.max_batch_size or now >= due:
                return batch, None
            wait = due - now if wait is None else min(wait, due - now)
        return None, wait

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    batch, wait = self._ready(time.monotonic())
                    if batch is not None:
                        self._pending.remove(batch)
                        break
                    self._cond.wait(wait)
            self._run(batch)

    def _run(self, batch: _Batch) -> None:
        try:
            outputs = self._run_merged(batch)
            for task, task_outputs in zip(batch.tasks, outputs):
                task.outputs = task_outputs
        except Exception as err:  # one failure fails the batch, as in TF Serving
            failure = err if isinstance(err, ServingError) else ServingError(
                "INTERNAL", f"{type(err).__name__}: {err}")
            for task in batch.tasks:
                task.error = failure
        for task in batch.tasks:
            task.done.set()

    def _run_merged(self, batch: _Batch) -> list[list[np.ndarray]]:
        merged = [self._merge([t.feeds[i] for t in batch.tasks], batch.size)
                  for i in range(len(batch.feed_names))]
        padded = merged[0].shape[0]
        if self.metrics is not None:
            self.metrics.batch(batch.size, padded, len(batch.tasks))
        values = inference.run(batch.loaded, dict(zip(batch.feed_names, merged)), batch.fetches)
        for value in values:
            if np.ndim(value) == 0:
                raise ServingError("FAILED_PRECONDITION", "Batched output tensor has 0 dimensions")
            if np.shape(value)[0] != padded:
                raise ServingError("FAILED_PRECONDITION",
                                   "Batched output tensor's 0th dimension does not equal the sum "
                                   "of the 0th dimension sizes of the input tensors")
        results, start = [], 0
        for task in batch.tasks:
            results.append([value[start:start + task.size] for value in values])
            start += task.size
        return results

    def _merge(self, arrays: list[np.ndarray], size: int) -> np.ndarray:
        """One input of every request, concatenated, then padded to an allowed batch size."""
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1:
            if not self.parameters.pad_variable_length_inputs:
                raise ServingError("FAILED_PRECONDITION", "Tensors with name from different "
                                   "tasks have different shapes and padding is turned off. Set "
                                   "pad_variable_length_inputs to true, or ensure that all "
                                   "tensors with the same name have equal dimensions starting "
                                   "with the first dim.")
            widest = tuple(max(dims) for dims in zip(*shapes))
            arrays = [_pad_dims(a, widest) for a in arrays]
        merged = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        target = next((n for n in self.parameters.allowed_batch_sizes if n >= size), size)
        if target > size:  # copies of the last request's first row, as TF Serving pads
            merged = np.concatenate([merged, np.repeat(arrays[-1][:1], target - size, axis=0)])
        return merged

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for batch in pending:  # the requests still waiting are told, not left hanging
            for task in batch.tasks:
                task.error = ServingError("UNAVAILABLE", "the server is shutting down")
                task.done.set()
        for thread in self._threads:
            thread.join(timeout=30)


def _task_size(arrays: list[np.ndarray]) -> int:
    if not arrays:
        raise invalid("Batching Run() must have at least one input tensor")
    if any(a.ndim == 0 for a in arrays):
        raise invalid("Batching Run() input tensors must have at least one dimension")
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) > 1:
        raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


def _pad_dims(array: np.ndarray, widest: tuple[int, ...]) -> np.ndarray:
    """``array`` padded at the end of each dimension after the first up to ``widest``, with its
    own first value (TF Serving's ``pad_variable_length_inputs``)."""
    pads = [(0, 0)] + [(0, want - have) for have, want in zip(array.shape[1:], widest)]
    if not any(after for _, after in pads):
        return array
    fill = array.reshape(-1)[0] if array.size else 0
    return np.pad(array, pads, constant_values=fill)
