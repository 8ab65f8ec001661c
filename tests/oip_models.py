"""SavedModels for the Open Inference Protocol tests: one shaped like Triton's ``simple``
(``INPUT0``, ``INPUT1``: INT32 [1, 16]; ``OUTPUT0`` their sum, ``OUTPUT1`` their difference,
as in triton-inference-server/server docs/examples/model_repository/simple), built with TF."""

from __future__ import annotations

from pathlib import Path

from shared.tfcompat import tf, v1
from tests.tfs_models import _save, _signature


def simple(path: Path) -> Path:
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0, name="unused")  # a SavedModel needs a variable to restore
        a = v1.placeholder(tf.int32, [None, 16], name="INPUT0")
        b = v1.placeholder(tf.int32, [None, 16], name="INPUT1")
        outputs = {"OUTPUT0": tf.add(a, b, name="OUTPUT0"),
                   "OUTPUT1": tf.subtract(a, b, name="OUTPUT1")}
        signatures = {"serving_default": _signature({"INPUT0": a, "INPUT1": b}, outputs),
                      "sum_only": _signature({"INPUT0": a, "INPUT1": b},
                                             {"OUTPUT0": outputs["OUTPUT0"]})}
    return _save(path, graph, signatures)


# every datatype of the spec but BF16, as TF names it
ALL_DTYPES = {"BOOL": tf.bool, "INT8": tf.int8, "INT16": tf.int16, "INT32": tf.int32,
              "INT64": tf.int64, "UINT8": tf.uint8, "UINT16": tf.uint16, "UINT32": tf.uint32,
              "UINT64": tf.uint64, "FP16": tf.float16, "FP32": tf.float32, "FP64": tf.float64,
              "BYTES": tf.string}


def echo_all(path: Path) -> Path:
    """One input per datatype, named as the datatype, each returned as the output of the same
    name: what a request's tensor came in as is what comes back."""
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0, name="unused")
        feeds = {name: v1.placeholder(dtype, None, name=f"in_{name}")
                 for name, dtype in ALL_DTYPES.items()}
        outputs = {name: tf.identity(t, name=f"out_{name}") for name, t in feeds.items()}
        typed = [name for name in feeds if name != "FP16"]  # FP16 has no typed gRPC contents
        signatures = {"serving_default": _signature(feeds, outputs),
                      "typed": _signature({n: feeds[n] for n in typed},
                                          {n: outputs[n] for n in typed})}
    return _save(path, graph, signatures)


def sum_model(path: Path) -> Path:
    """MLServer's test ``SumModel`` as a SavedModel: ``input-0`` (INT32), summed whole into
    ``output-0`` of shape [1]."""
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0, name="unused")
        x = v1.placeholder(tf.int32, [None, None], name="input_0")
        total = tf.reshape(tf.reduce_sum(x), [1], name="output_0")
        signatures = {"serving_default": _signature({"input-0": x}, {"output-0": total})}
    return _save(path, graph, signatures)


def gate(path: Path) -> Path:
    """A model whose requests wait at gates the test opens: ``paths`` (BYTES [n]) are FIFOs it
    opens one after the other, each open waiting for a writer (TF reads a FIFO with ``pread``,
    which fails: the error is ignored). So a test sees a request in flight when it can open the
    first FIFO for writing, and holds it there, on its version, until it opens the last one; no
    clock involved. Answers ``y`` = 7."""
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0, name="unused")
        paths = v1.placeholder(tf.string, [None], name="paths")
        files = tf.data.Dataset.from_tensor_slices(paths).map(tf.io.read_file).ignore_errors()
        read = files.reduce(tf.constant(0), lambda count, _: count + 1)
        y = tf.identity(read + 7, name="y")
        signatures = {"serving_default": _signature({"paths": paths}, {"y": y})}
    return _save(path, graph, signatures)
