"""Server-side batching, as TF Serving configures and runs it (``--enable_batching``,
``--batching_parameters_file``): concurrent requests for the same version, signature, inputs and
outputs are merged into one ``Session.run`` and split back.

- Each version and tensor signature has its own queue, with its own ``max_enqueued_batches``
  bound, as TF Serving gives each its own (servables/tensorflow/bundle_factory_util.cc:147-161,
  ``AddQueue`` per signature; batching/batching_session.cc:284, 326-337): one busy model never
  makes an idle one answer 503. A queue exists while it holds a batch, so the versions swapped
  away leave nothing behind. The batch threads go round the queues, one batch from each in
  turn (TF's ``SharedBatchScheduler``, once tensorflow_serving/batching/shared_batch_scheduler.h
  :72-75).
- A request joins the batch being formed in its queue, if it fits; if not, that batch is closed
  and a new one opened (``Queue::Schedule``, shared_batch_scheduler.h:533-542). A batch runs
  when it is closed or full, when ``batch_timeout_micros`` have passed since it opened, or (with
  a timeout of 0) as soon as a batch thread is free. Requests are concatenated along dimension
  0, in the order they came; each gets its own rows back.
- A batch never mixes versions: a swap closes the batches of the version it replaces, which run
  at once.
- ``allowed_batch_sizes``: a batch is padded up to the next allowed size with copies of the
  last request's first row. ``pad_variable_length_inputs``: inputs whose dimensions after the
  first differ are padded up to the largest, with that tensor's own first value (TF Serving's
  rule). A request that cannot join the others fails alone (``consumer.serving.batch_merge``);
  a failure of the run fails the whole batch, as in TF Serving.
- A full queue (``max_enqueued_batches`` batches in it) answers UNAVAILABLE (503) at once, and
  so does every request after ``close``.
- With ``--max_inflight_requests``, a batch holds one place (``consumer.serving.admission``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from consumer.loader import Loaded
from consumer.serving import admission, batch_merge, inference
from consumer.serving.batching_parameters import (  # noqa: F401 - the callers' names
    MAX_BATCH_THREADS, Parameters, load_parameters, parse_parameters)
from consumer.serving.errors import ServingError, invalid

SHUTTING_DOWN = "the server is shutting down"


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
    closed: bool = False  # a newer batch or a swap closed it: it runs at once, whatever its size


class Batcher:
    """The batch queues of every version and tensor signature, and the threads that run them."""

    def __init__(self, parameters: Parameters, metrics=None) -> None:
        self.parameters = parameters
        self.metrics = metrics
        # key -> its batches, oldest first (only the last may be open); in the order the
        # threads serve them next. A queue is dropped once its last batch is taken.
        self._queues: dict[tuple, deque[_Batch]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(parameters.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    @property
    def queues(self) -> int:
        """The queues holding a batch now (the state kept: it shrinks back to 0)."""
        with self._cond:
            return len(self._queues)

    def run(self, loaded: Loaded, feeds: dict[str, np.ndarray], fetches: tuple[str, ...]) -> list:
        """A request's run, in a batch with others: its outputs, its rows only."""
        names = tuple(sorted(feeds))  # one queue whatever order a client named its inputs in
        arrays = [np.asarray(feeds[name]) for name in names]
        size = _task_size(arrays)
        if size > self.parameters.max_batch_size:
            raise invalid(f"Task size {size} is larger than maximum input batch size "
                          f"{self.parameters.max_batch_size}")
        if self.parameters.pad_variable_length_inputs:
            batch_merge.check_paddable(arrays)
        task = _Task(arrays, size)
        if self._enqueue((id(loaded), names, fetches), loaded, task):
            admission.give_back()  # the batch it joined holds a place already
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def _enqueue(self, key: tuple, loaded: Loaded, task: _Task) -> bool:
        """``task`` into its queue's open batch, or a new one; whether it joined one."""
        with self._cond:
            if self._stopping:  # no batch thread will ever take it
                raise ServingError("UNAVAILABLE", SHUTTING_DOWN)
            queue = self._queues.get(key)
            batch = queue[-1] if queue else None
            joined = batch is not None and not batch.closed and \
                batch.size + task.size <= self.parameters.max_batch_size
            if not joined:
                if queue and len(queue) >= self.parameters.max_enqueued_batches:
                    raise ServingError(
                        "UNAVAILABLE", "The batch scheduling queue to which this task was "
                        f"submitted is full; currently {len(queue)} batches enqueued and "
                        f"max_enqueued_batches is {self.parameters.max_enqueued_batches}")
                if batch is not None:
                    batch.closed = True  # TF's StartNewBatch: the one it replaces runs now
                batch = _Batch(key, loaded, key[1], key[2], opened=time.monotonic())
                self._queues.setdefault(key, deque()).append(batch)
            batch.tasks.append(task)
            batch.size += task.size
            self._cond.notify()
            return joined

    def close_version(self, loaded_ids: set[int]) -> None:
        """Versions swapped out: the batches forming for them run now, not at their timeout."""
        with self._cond:
            for key, queue in self._queues.items():
                if key[0] in loaded_ids:
                    for batch in queue:
                        batch.closed = True
            self._cond.notify_all()

    def _take(self, now: float) -> tuple[_Batch | None, float | None]:
        """The next batch that may run now, from the first queue in turn that has one (that
        queue goes to the back of the turn); or None and how long until one may."""
        timeout = self.parameters.batch_timeout_micros / 1e6
        wait = None
        for key, queue in self._queues.items():
            batch = queue[0]
            due = batch.opened + timeout
            if batch.closed or batch.size >= self.parameters.max_batch_size or now >= due:
                queue.popleft()
                del self._queues[key]
                if queue:
                    self._queues[key] = queue
                return batch, None
            wait = due - now if wait is None else min(wait, due - now)
        return None, wait

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    batch, wait = self._take(time.monotonic())
                    if batch is not None:
                        break
                    self._cond.wait(wait)
            self._run(batch)

    def _run(self, batch: _Batch) -> None:
        """Run ``batch``: the requests that cannot join the others fail alone; a failure of
        the run itself fails all that ran, as in TF Serving."""
        pad = self.parameters.pad_variable_length_inputs
        tasks = batch.tasks
        try:  # whatever happens here, every task of the batch is answered below
            kept, failed = batch_merge.sort_out(batch.feed_names, [t.feeds for t in tasks], pad)
            for index, error in failed.items():
                batch.tasks[index].error = error
            tasks = [batch.tasks[i] for i in kept]
            if tasks:
                for task, outputs in zip(tasks, self._run_merged(batch, tasks)):
                    task.outputs = outputs
        except Exception as err:
            failure = err if isinstance(err, ServingError) else ServingError(
                "INTERNAL", f"{type(err).__name__}: {err}")
            for task in tasks:
                task.error = failure
        for task in batch.tasks:
            task.done.set()

    def _run_merged(self, batch: _Batch, tasks: list[_Task]) -> list[list[np.ndarray]]:
        size = sum(t.size for t in tasks)
        target = next((n for n in self.parameters.allowed_batch_sizes if n >= size), size)
        pad = self.parameters.pad_variable_length_inputs
        merged = [batch_merge.merge([t.feeds[i] for t in tasks], target, pad)
                  for i in range(len(batch.feed_names))]
        padded = merged[0].shape[0]
        if self.metrics is not None:
            self.metrics.batch(size, padded, len(tasks))
        values = inference.run(batch.loaded, dict(zip(batch.feed_names, merged)), batch.fetches)
        for value in values:
            if np.ndim(value) == 0:
                raise ServingError("FAILED_PRECONDITION", "Batched output tensor has 0 dimensions")
            if np.shape(value)[0] != padded:
                raise ServingError("FAILED_PRECONDITION",
                                   "Batched output tensor's 0th dimension does not equal the sum "
                                   "of the 0th dimension sizes of the input tensors")
        results, start = [], 0
        for task in tasks:
            results.append([value[start:start + task.size] for value in values])
            start += task.size
        return results

    def close(self) -> None:
        """Stop: the requests still queued, and any that comes later, get UNAVAILABLE at once
        (a gRPC handler left past the shutdown grace must not wait for good)."""
        with self._cond:
            self._stopping = True
            queues, self._queues = self._queues, {}
            self._cond.notify_all()
        for queue in queues.values():
            for batch in queue:
                for task in batch.tasks:
                    task.error = ServingError("UNAVAILABLE", SHUTTING_DOWN)
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
