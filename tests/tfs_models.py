"""SavedModels that nobody here wrote to our contract, for the serving tests: TF Serving's own
test model ``half_plus_two`` (built as its ``saved_model_half_plus_two.py`` builds it), TF2 and
Keras exports, and small models whose signatures echo their inputs or return fixed outputs, so
that a TF Serving test case can run over the wire exactly as its request was written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.tfcompat import tf, v1

PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
DTYPES = {"DT_FLOAT": tf.float32, "DT_DOUBLE": tf.float64, "DT_INT32": tf.int32,
          "DT_INT64": tf.int64, "DT_INT16": tf.int16, "DT_INT8": tf.int8, "DT_UINT8": tf.uint8,
          "DT_STRING": tf.string, "DT_BOOL": tf.bool, "DT_COMPLEX64": tf.complex64}


def _info(tensor):
    info = v1.saved_model.utils.build_tensor_info(tensor)
    if tensor.op.name == "tf_example":  # as in the SavedModel TF Serving's tests load: its
        info.tensor_shape.Clear()        # metadata shows this input's rank as unknown
        info.tensor_shape.unknown_rank = True
    return info


def _signature(inputs: dict, outputs: dict, method: str = PREDICT):
    return v1.saved_model.signature_def_utils.build_signature_def(
        {k: _info(t) for k, t in inputs.items()}, {k: _info(t) for k, t in outputs.items()},
        method)


def _save(path: Path, graph: tf.Graph, signatures: dict, assets: list | None = None,
          main_op=None, as_text: bool = False) -> Path:
    with v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(path))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures,
                                             assets_collection=assets, main_op=main_op,
                                             strip_default_attrs=True)
        builder.save(as_text=as_text)  # as_text: saved_model.pbtxt, as TF Serving's script can
    return Path(path)


def half_plus_two(path: Path, a: float = 0.5, b: float = 2.0, c: float = 3.0,
                  with_x2_classifier: bool = False, as_text: bool = False) -> Path:
    """TF Serving's test model: y = a*x + b read from tf.Examples, with its predict, regress and
    classify signatures (``saved_model_half_plus_two.py``). ``b`` = 3 gives half_plus_three."""
    graph = tf.Graph()
    with graph.as_default():
        va = v1.Variable(a, name="a")
        vb = v1.Variable(b, name="b")
        vc = v1.Variable(c, name="c")
        examples = v1.placeholder(tf.string, [None], name="tf_example")
        parsed = v1.parse_example(examples, {
            "x": v1.FixedLenFeature([1], tf.float32),
            "x2": v1.FixedLenFeature([1], tf.float32, default_value=[0.0])})
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(va * x + vb, name="y")
        y2 = tf.identity(va * x + vc, name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        y3 = tf.identity(v1.Variable(0.5, name="a2") * x2 + v1.Variable(3.0, name="c2"), name="y3")
        signatures = {
            "serving_default": _signature({"x": x}, {"y": y}),
            "regress_x_to_y": _signature({"inputs": examples}, {"outputs": y}, REGRESS),
            "regress_x_to_y2": _signature({"inputs": examples}, {"outputs": y2}, REGRESS),
            "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, REGRESS),
            "classify_x_to_y": _signature({"inputs": examples}, {"scores": y}, CLASSIFY),
        }
        if with_x2_classifier:
            signatures["classify_x2_to_y3"] = _signature({"inputs": x2}, {"scores": y3}, CLASSIFY)
    return _save(path, graph, signatures, as_text=as_text)


class HalfPlusTwo:
    """Versions of ``half_plus_two`` from one graph: y = 0.5x + b, with each version's own b.
    One graph and one saver, so that versions differ in their variables alone (as a training
    run's do), and the server restores each into the graph it has (the warm swap)."""

    def __init__(self, spin: int = 0) -> None:
        """``spin``: loop this many times before reading the variables, so that a request is
        long enough to span swaps (20,000 turns took 130 ms here) and reads its version's
        weights at its end."""
        self.graph = tf.Graph()
        with self.graph.as_default():
            x = v1.placeholder(tf.float32, None, name="x")
            a = v1.Variable(0.5, name="a")
            self.b = v1.Variable(2.0, name="b")
            turns = tf.while_loop(lambda i: i < spin, lambda i: i + 1, [tf.constant(0)])[0]
            with tf.control_dependencies([turns]):
                y = tf.identity(a.read_value() * x + self.b.read_value(), name="y")
            self.value = v1.placeholder(tf.float32, [])
            self.assign = self.b.assign(self.value)
            self.signatures = {"serving_default": _signature({"x": x}, {"y": y})}
            self.saver = v1.train.Saver(sharded=True)
            self.session = v1.Session(graph=self.graph)
            self.session.run(v1.global_variables_initializer())

    def save(self, path: Path, b: float) -> Path:
        self.session.run(self.assign, {self.value: b})
        with self.graph.as_default():
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(self.session, ["serve"],
                                                 signature_def_map=self.signatures,
                                                 saver=self.saver, strip_default_attrs=True)
            builder.save()
        return Path(path)

    def close(self) -> None:
        self.session.close()


def half_plus_three(path: Path) -> Path:
    """The api_rest.md example model: y = 0.5x + 3, its regress signature keyed by the method."""
    graph = tf.Graph()
    with graph.as_default():
        examples = v1.placeholder(tf.string, [None], name="tf_example")
        x = tf.identity(v1.parse_example(examples, {"x": v1.FixedLenFeature([1], tf.float32)})["x"],
                        name="x")
        y = tf.identity(v1.Variable(0.5, name="a") * x + v1.Variable(3.0, name="b"), name="y")
        signatures = {"serving_default": _signature({"x": x}, {"y": y}),
                      REGRESS: _signature({"inputs": examples}, {"outputs": y}, REGRESS)}
    return _save(path, graph, signatures)


def echo(path: Path, inputs: dict[str, str], also_as: tuple[str, ...] = ()) -> Path:
    """A signature whose outputs are its inputs (name -> TF dtype name), shapes unknown: what a
    request's JSON parsed to comes back as the answer. ``also_as``: more names for it."""
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0.0, name="unused")  # a SavedModel needs a variable to restore
        feeds = {name: v1.placeholder(DTYPES[dtype], None, name=f"in_{i}")
                 for i, (name, dtype) in enumerate(sorted(inputs.items()))}
        outputs = {name: tf.identity(t, name=f"out_{i}") for i, (name, t) in enumerate(feeds.items())}
        signatures = {key: _signature(feeds, outputs) for key in ("serving_default", *also_as)}
    return _save(path, graph, signatures)


def constant(path: Path, outputs: dict[str, np.ndarray]) -> Path:
    """A signature with one float input ``x`` (ignored) and fixed outputs."""
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0.0, name="unused")
        x = v1.placeholder(tf.float32, None, name="x")
        tensors = {name: tf.identity(tf.constant(value), name=f"out_{i}")
                   for i, (name, value) in enumerate(sorted(outputs.items()))}
        signatures = {"serving_default": _signature({"x": x}, tensors)}
    return _save(path, graph, signatures)


def example_echo(path: Path) -> Path:
    """Classify and regress signatures that show what examples they were given: the label is
    each serialized example in web-safe base64, the regression its length in bytes."""
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0.0, name="unused")
        examples = v1.placeholder(tf.string, [None], name="tf_example")
        labels = tf.reshape(tf.io.encode_base64(examples, pad=True), [-1, 1])
        scores = tf.zeros(tf.shape(labels), tf.float32)
        length = tf.cast(tf.strings.length(examples), tf.float32)
        signatures = {"serving_default": _signature({"inputs": examples},
                                                    {"classes": labels, "scores": scores},
                                                    CLASSIFY),
                      "regress": _signature({"inputs": examples}, {"outputs": length}, REGRESS)}
    return _save(path, graph, signatures)


def fixed_results(path: Path, classes: list[list[str]], scores: list[list[float]],
                  values: list[float]) -> Path:
    """Classify (``serving_default``) and regress (``regress``) signatures with fixed results,
    one row per example of the request (the request must send as many examples)."""
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0.0, name="unused")
        examples = v1.placeholder(tf.string, [None], name="tf_example")
        signatures = {
            "serving_default": _signature({"inputs": examples},
                                          {"classes": tf.constant(classes),
                                           "scores": tf.constant(scores, tf.float32)}, CLASSIFY),
            "regress": _signature({"inputs": examples},
                                  {"outputs": tf.constant(values, tf.float32)}, REGRESS)}
    return _save(path, graph, signatures)


class Tf2Module:
    """TF2 exports: one ``tf.Module`` (y = sum(w * x)), saved with ``tf.saved_model.save`` and a
    signature, once per version with its own weights (traced once, so each save is quick)."""

    def __init__(self, width: int = 3) -> None:
        class Linear(tf.Module):
            def __init__(self) -> None:
                super().__init__()
                self.w = tf.Variable(tf.zeros([width]), dtype=tf.float32)

            @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float32)])
            def __call__(self, x):
                return {"y": tf.reduce_sum(x * self.w, axis=1)}

        self.module = Linear()

    def save(self, path: Path, weights: list[float]) -> Path:
        self.module.w.assign(weights)
        tf.saved_model.save(self.module, str(path),
                            signatures={"serving_default": self.module.__call__})
        return Path(path)


class KerasExport:
    """Keras 3 ``model.export()`` of one dense layer (no bias), once per version's kernel."""

    def __init__(self, inputs: int = 4, units: int = 2) -> None:
        import keras

        self.model = keras.Sequential([keras.Input((inputs,)),
                                       keras.layers.Dense(units, use_bias=False)])

    def save(self, path: Path, kernel: np.ndarray) -> Path:
        self.model.layers[0].set_weights([kernel])
        self.model.export(str(path), verbose=False)
        return Path(path)


def publish(base: Path, version: int, build) -> Path:
    """A version into a TF Serving base path in one rename, as a careful writer does: built
    under a name that is not a number, then renamed to its number."""
    staging = base / f".staging-{version}"
    build(staging)
    final = base / str(version)
    staging.rename(final)
    return final


def warmup_records(path: Path, requests: list) -> Path:
    """``assets.extra/tf_serving_warmup_requests`` for a SavedModel: a TFRecord of
    ``PredictionLog`` protos, each wrapping one of ``requests`` (Predict, Classify or Regress
    requests)."""
    from tensorflow_serving.apis import prediction_log_pb2

    target = Path(path) / "assets.extra" / "tf_serving_warmup_requests"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for request in requests:
            entry = prediction_log_pb2.PredictionLog()
            kind = {"PredictRequest": entry.predict_log, "ClassificationRequest":
                    entry.classify_log, "RegressionRequest": entry.regress_log}
            kind[type(request).__name__].request.CopyFrom(request)
            writer.write(entry.SerializeToString())
    return target


def batch_probe(path: Path) -> Path:
    """y = x + the number of rows the session ran on: what a request gets back says how big the
    batch it ran in was, padding included."""
    graph = tf.Graph()
    with graph.as_default():
        v1.Variable(0.0, name="unused")
        x = v1.placeholder(tf.float32, [None, None], name="x")
        rows = tf.cast(tf.shape(x)[0], tf.float32)
        signatures = {"serving_default": _signature({"x": x}, {"y": tf.identity(x + rows,
                                                                                 name="y")})}
    return _save(path, graph, signatures)
