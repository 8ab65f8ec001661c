"""Big REST bodies are parsed, and big answers written, in a helper process, so that they cost
the server no more than their own share of the CPU.

Python's JSON parser, numpy's conversion of nested lists and the encoding of tf.Examples run
while holding the GIL: a 3 MB predict body of 500,000 rows held it for up to 370 ms at a time,
a 3.5 MB classify body of 500,000 examples for up to 359 ms, and every small request waited that
long. In a process of its own the work takes one core, and the server keeps the other. The
helper is started at the first big body (spawned: it imports numpy and the codec, never
TensorFlow) and parses one body at a time; arrays travel back by pickle. A small body is parsed
in the server itself, where the hop would cost more than it saves, by the same functions
(``parse_predict`` and ``examples.parse_examples``): one path, two places.
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
DEFAULT_SIGNATURE = "serving_default"  # inference.DEFAULT_SIGNATURE (that module imports TF)

InputSpec = namedtuple("InputSpec", "dtype dtype_name")  # what the codec reads of a TensorSpec


def input_specs(signatures: dict, plain: bool) -> dict[str, dict]:
    """Each signature's inputs by name; ``plain`` for the helper (no TensorFlow types)."""
    if not plain:
        return {key: signature.inputs for key, signature in signatures.items()}
    return {key: {name: InputSpec(spec.dtype, spec.dtype_name)
                  for name, spec in signature.inputs.items()}
            for key, signature in signatures.items()}


def parse_predict(body: bytes, signatures: dict[str, dict] | None, max_elements: int
                  ) -> tuple[str, dict[str, np.ndarray], bool] | None:
    """(signature name, input arrays, row format) of a predict body, given the inputs of every
    signature of the version that will run it (``InputSpec`` or ``TensorSpec`` by input name),
    in TF Serving's order (``json_tensor.cc``, ``FillPredictRequestFromJson``): the body parses,
    its signature name is a string, the signature exists and has inputs, then the values. With
    ``signatures`` None (the model was not found) only the first two are checked: a body's
    error comes before the lookup's, as TF Serving parses first."""
    parsed = json_parse.parse(body, max_elements)
    name = json_parse.signature_name(parsed)
    if signatures is None:
        return None
    specs = signatures.get(name or DEFAULT_SIGNATURE)
    if specs is None:  # http_rest_api_handler.cc, GetInfoMap
        raise invalid(f'Serving signature name: "{name or DEFAULT_SIGNATURE}" not found in '
                      'signature def')
    if not specs:  # json_tensor.cc: a signature without inputs takes no predict over REST
        raise invalid(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    inputs, row_format = json_tensor.predict_inputs(parsed, specs)
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

    def parse(self, function, body: bytes, *args):
        """``function(body, *args)``: here for a small body, in the helper for a big one."""
        if len(body) < OFFLOAD_BYTES:
            return function(body, *args)
        return self.run(function, body, *args)

    def run(self, function, *args):
        """``function(*args)`` in the helper: its result, or the ``ServingError`` it raised. A
        helper that died (out of memory) is replaced, and this request alone fails."""
        pool = self._executor()
        try:
            return pool.submit(function, *args).result()
        except ServingError:
            raise
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:  # not one another request has made since
                    self._pool = None
            pool.shutdown(wait=False)
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
