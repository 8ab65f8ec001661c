"""Big REST bodies are parsed, and big answers written, in a helper process, so that they cost
the server no more than their own share of the CPU.

Python's JSON parser and numpy's conversion of nested lists run in C while holding the GIL: a
3 MB body of 500,000 rows held it for up to 370 ms at a time, and every small request waited
that long. In a process of its own the work takes one core, and the server keeps the other. The
helper is started at the first big body (spawned: it imports numpy and the codec, never
TensorFlow) and parses one body at a time; arrays travel back by pickle. A small body is parsed
in the server itself, where the hop would cost more than it saves.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import namedtuple
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from consumer.serving import json_parse, json_render, json_tensor
from consumer.serving.errors import ServingError, invalid

OFFLOAD_BYTES = 256 * 1024  # a body this big or bigger is parsed in the helper
OFFLOAD_VALUES = 1 << 16  # an answer with this many values or more is written there

InputSpec = namedtuple("InputSpec", "dtype dtype_name")  # what the codec reads of a TensorSpec


def plain_specs(signatures: dict) -> dict[str, dict[str, InputSpec]]:
    """Each signature's inputs, as the helper can take them (no TensorFlow types)."""
    return {key: {name: InputSpec(spec.dtype, spec.dtype_name)
                  for name, spec in signature.inputs.items()}
            for key, signature in signatures.items()}


def parse_predict(body: bytes, specs: dict[str, dict[str, InputSpec]], max_elements: int
                  ) -> tuple[str, dict[str, np.ndarray], bool]:
    """(signature name, input arrays, row format) of a predict body, given every signature's
    inputs; run in the helper (or here, for a body too small to be worth the hop)."""
    parsed = json_parse.parse(body, max_elements)
    name = json_parse.signature_name(parsed)
    key = name or "serving_default"
    if key not in specs:
        raise invalid(f'Serving signature name: "{key}" not found in signature def')
    inputs, row_format = json_tensor.predict_inputs(parsed, specs[key])
    return name, inputs, row_format


class Offload:
    """The helper process, started when first needed; one body at a time."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            return self._pool

    def run(self, function, *args):
        """``function(*args)`` in the helper: its result, or the ``ServingError`` it raised. A
        helper that died (out of memory) is replaced, and this request alone fails."""
        try:
            return self._executor().submit(function, *args).result()
        except ServingError:
            raise
        except BrokenProcessPool:
            with self._lock:
                self._pool = None
            raise ServingError("RESOURCE_EXHAUSTED", "the request's parser stopped (out of "
                                                     "memory?): send it in smaller parts") from None
        except MemoryError:
            raise ServingError("RESOURCE_EXHAUSTED", "the request does not fit in memory: send "
                                                     "it in smaller parts") from None

    def render_predict(self, outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
        if sum(np.size(a) for a in outputs.values()) < OFFLOAD_VALUES:
            return json_render.render_predict(outputs, row_format)
        return self.run(json_render.render_predict, outputs, row_format)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
