"""Which requests of a batch can be merged into one ``Session.run``, and the merge itself.

TF Serving merges a batch in ``BatchingSession::MergeInputTensors`` (tensorflow/serving at
9d981c5c, batching/batching_session.cc:486-590) and pads in batching/batching_util.cc; any input
that cannot join fails the *whole* batch there, so a neighbour's good request fails with it (and
a rank mismatch with padding on reads past its arrays: ``CalculateMaxDimSizes``,
batching_util.cc:156-186). Here the requests of a batch are sorted first: those whose inputs
agree with most of the others' (dtype, rank, and without padding the dimensions after the first;
ties go to the earliest) run, and each other request fails alone, with the code and text TF
Serving gives for its mismatch:

- padding off, other dimensions: ``FAILED_PRECONDITION`` "Tensors with name 'x' from different
  tasks have different shapes and padding is turned off..." (batching_session.cc:536-545);
- padding on, another rank: the same code (TF Serving has no answer of its own: its arrays overrun);
- another dtype: ``INVALID_ARGUMENT`` "Cannot concatenate tensors that have different data
  types..." (tensorflow/core/framework/tensor_util.cc, ``Concat``; TF Serving wraps it INTERNAL);
- padding on, an empty tensor that would need padding: ``INVALID_ARGUMENT`` "Got empty tensor in
  batch of non-empty tensors." (batching_util.cc:92-95);
- padding on, rank over 6: ``INVALID_ARGUMENT`` "Only tensors with rank from 1 to 6 can be
  padded." (batching_util.cc:148-152), refused before it is queued (``check_paddable``).
"""

from __future__ import annotations

import numpy as np

from consumer.serving.errors import ServingError, invalid

MAX_PADDED_RANK = 6  # batching_util.cc:148-152, as tensorflow/core/kernels/pad_op.cc


def check_paddable(arrays: list[np.ndarray]) -> None:
    """With ``pad_variable_length_inputs``, TF Serving pads every input of every request, and
    fails any of rank past 6 (``AddPadding``): refused here before it takes a queue's place."""
    if any(a.ndim > MAX_PADDED_RANK for a in arrays):
        raise invalid("Only tensors with rank from 1 to 6 can be padded.")


def _dtype(array: np.ndarray) -> str:
    """The TF dtype an array stands for, as TF names it (bytes, str and object: string)."""
    if array.dtype.kind in "OSU":
        return "string"
    return {"float32": "float", "float64": "double"}.get(array.dtype.name, array.dtype.name)


def _kind(feeds: list[np.ndarray], pad: bool) -> tuple:
    """What must agree for requests to be merged: per input its dtype and rank, and without
    padding its dimensions after the first."""
    return tuple((_dtype(a), a.ndim, None if pad else a.shape[1:]) for a in feeds)


def _mismatch(name: str, mine: np.ndarray, ref: np.ndarray, pad: bool) -> ServingError:
    if _dtype(mine) != _dtype(ref):
        return invalid(f"Cannot concatenate tensors that have different data types. Got "
                       f"{_dtype(ref)} and {_dtype(mine)}.")
    if not pad:
        return ServingError(
            "FAILED_PRECONDITION", f"Tensors with name '{name}' from different tasks have "
            "different shapes and padding is turned off. Set pad_variable_length_inputs to "
            "true, or ensure that all tensors with the same name have equal dimensions "
            "starting with the first dim.")
    return ServingError(
        "FAILED_PRECONDITION", f"Tensors with name '{name}' from different tasks have "
        f"different ranks ({ref.ndim} and {mine.ndim}), which padding cannot join. Ensure that "
        "all tensors with the same name have the same rank.")


def sort_out(names: tuple[str, ...], feeds: list[list[np.ndarray]],
             pad: bool) -> tuple[list[int], dict[int, ServingError]]:
    """The requests (by index) that can run merged, and the error of each that cannot."""
    kinds = [_kind(f, pad) for f in feeds]
    counts: dict[tuple, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    shared = max(counts, key=counts.get)  # the first of the most common: ties to the earliest
    ref = feeds[kinds.index(shared)]
    kept, failed = [], {}
    for index, (kind, mine) in enumerate(zip(kinds, feeds)):
        if kind == shared:
            kept.append(index)
            continue
        at = next(i for i, (a, b) in enumerate(zip(kind, shared)) if a != b)
        failed[index] = _mismatch(names[at], mine[at], ref[at], pad)
    if pad:
        kept = _drop_empty(kept, feeds, failed)
    return kept, failed


def _widest(arrays: list[np.ndarray]) -> tuple[int, ...]:
    """Each dimension after the first, its largest among ``arrays`` (those with values only,
    unless none has any: an empty request does not widen its neighbours)."""
    full = [a for a in arrays if a.size] or arrays
    return tuple(max(dims) for dims in zip(*(a.shape[1:] for a in full)))


def _drop_empty(kept: list[int], feeds: list[list[np.ndarray]],
                failed: dict[int, ServingError]) -> list[int]:
    """Padding fills with a tensor's own first value: a tensor with none cannot be padded."""
    for position in range(len(feeds[kept[0]])):
        widest = _widest([feeds[i][position] for i in kept])
        for index in list(kept):
            array = feeds[index][position]
            if array.size == 0 and array.shape[0] * int(np.prod(widest)) > 0 and \
                    array.shape[1:] != widest:
                failed[index] = invalid("Got empty tensor in batch of non-empty tensors.")
                kept.remove(index)
        if not kept:
            break
    return kept


def merge(arrays: list[np.ndarray], target: int, pad: bool) -> np.ndarray:
    """One input of every request, padded (with ``pad``) across the dimensions after the first,
    concatenated, then padded to ``target`` rows with copies of the last request's first row
    (batching_session.cc:549-562)."""
    if pad:
        widest = _widest(arrays)
        arrays = [_pad_dims(a, widest) for a in arrays]
    merged = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    rows = merged.shape[0]
    if target > rows > 0:
        last = next(a for a in reversed(arrays) if a.shape[0])  # a request may bring no rows
        merged = np.concatenate([merged, np.repeat(last[:1], target - rows, axis=0)])
    return merged


def _pad_dims(array: np.ndarray, widest: tuple[int, ...]) -> np.ndarray:
    """``array`` padded at the end of each dimension after the first up to ``widest``, with its
    own first value (batching_util.cc:97-99); one with no values has none to pad."""
    if array.shape[1:] == widest:
        return array
    if array.size == 0:  # sort_out kept it only if padded it still has no values
        return np.empty((array.shape[0],) + widest, array.dtype)
    pads = [(0, 0)] + [(0, want - have) for have, want in zip(array.shape[1:], widest)]
    return np.pad(array, pads, constant_values=array.reshape(-1)[0])
