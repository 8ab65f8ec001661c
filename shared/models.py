"""Graph building for the two seed models: a training graph and a separate serving graph.

Only the producer imports this module. The consumer reads exports through ``shared.contract``
and never needs to know how a graph was built.

- ``linear`` (seed 000): y = slope * x + intercept, plain gradient descent from 1.8 / 1.8.
- ``mlp`` (seed 002): 28 features -> 64 ReLU -> 64 ReLU -> 5 logits, Adam at 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shared import contract, datasets
from shared.contract import ServingGraph
from shared.tfcompat import tf, v1


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dataset: str  # catalog name
    default_steps: int
    log_every_epochs: int
    forward: Callable[[tf.Tensor, datasets.Dataset], tf.Tensor]
    optimizer: Callable[[float], v1.train.Optimizer]  # given the learning rate
    learning_rate: float

    def replica_learning_rate(self, replicas: int) -> float:
        """Each of ``replicas`` asynchronous workers applies gradients computed on values the
        others have moved since: dividing the rate by their number keeps those stale steps
        stable. Gradient descent at 0.02 on the linear model, stable alone, diverged with two
        workers (loss 1e26 by step 4000); at 0.01 it reached the noise floor in every run."""
        return self.learning_rate / replicas


# -- forward passes: shared by the training and the serving graph, so variable names match --------


def _linear_forward(features: tf.Tensor, dataset: datasets.Dataset) -> tf.Tensor:
    with v1.variable_scope("model_variables"):
        slope = v1.get_variable("slope", initializer=tf.constant(1.8, tf.float64))
        intercept = v1.get_variable("intercept", initializer=tf.constant(1.8, tf.float64))
    return tf.add(slope * features, intercept, name="predictions")


def _dense(inputs: tf.Tensor, units: int, name: str, relu: bool) -> tf.Tensor:
    """A dense layer from plain variables: ``tf.compat.v1.layers`` is gone under Keras 3."""
    with v1.variable_scope(name):
        kernel = v1.get_variable("kernel", [inputs.shape[-1], units],
                                 initializer=v1.glorot_uniform_initializer())
        bias = v1.get_variable("bias", [units], initializer=v1.zeros_initializer())
    outputs = tf.matmul(inputs, kernel) + bias
    return tf.nn.relu(outputs) if relu else outputs


def _mlp_forward(features: tf.Tensor, dataset: datasets.Dataset) -> tf.Tensor:
    hidden = _dense(features, 64, "hidden_layer_1", relu=True)
    hidden = _dense(hidden, 64, "hidden_layer_2", relu=True)
    return _dense(hidden, len(dataset.class_names), "output_layer", relu=False)


MODELS = {
    "linear": ModelSpec("linear", "linear", default_steps=2000, log_every_epochs=100,
                        forward=_linear_forward, optimizer=v1.train.GradientDescentOptimizer,
                        learning_rate=0.02),
    "mlp": ModelSpec("mlp", "random_classes", default_steps=10000, log_every_epochs=20,
                     forward=_mlp_forward, optimizer=v1.train.AdamOptimizer,
                     learning_rate=1e-4),
}


LEARNING_RATE = "learning_rate"  # the training graph's rate: fed by a run, else the model's


def learning_rate_feed(graph: tf.Graph, rate: float) -> dict:
    """The feed that makes a step of ``graph`` train at ``rate``."""
    return {graph.get_tensor_by_name(f"{LEARNING_RATE}:0"): rate}


def _placeholders(dataset: datasets.Dataset, with_labels: bool) -> tuple[tf.Tensor, tf.Tensor | None]:
    regression = dataset.task == "regression"
    dtype = tf.float64 if regression else tf.float32
    with tf.name_scope("inputs"):
        features = v1.placeholder(dtype, [None, dataset.num_features], name="features")
        if not with_labels:
            return features, None
        labels = (v1.placeholder(tf.float64, [None, 1], name="labels") if regression
                  else v1.placeholder(tf.int32, [None], name="labels"))
    return features, labels


def _metrics(outputs: tf.Tensor, labels: tf.Tensor, dataset: datasets.Dataset) -> list[tf.Tensor]:
    with tf.name_scope("metrics"):
        if dataset.task == "regression":
            return [tf.reduce_mean(tf.square(outputs - labels), name="loss")]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=outputs), name="loss")
        correct = tf.cast(tf.nn.in_top_k(predictions=outputs, targets=labels, k=1), tf.float32)
        return [loss, tf.reduce_mean(correct, name="accuracy")]


def build_training_graph(spec: ModelSpec, dataset: datasets.Dataset, seed: int,
                         device: Callable | str | None = None) -> tf.Graph:
    """The training graph with the full contract: global step, feeds, fetches, metrics, dataset.
    ``device`` places its ops, e.g. a ``replica_device_setter`` in a cluster.

    Its rate is ``LEARNING_RATE``, the model's own unless a step feeds another: the rate that
    suits a topology (``ModelSpec.replica_learning_rate``) belongs to the run that has it, and
    the graph, which every export carries, keeps the model's. So a consumer that continues an
    export alone, feeding features and labels only, trains at the model's rate."""
    graph = tf.Graph()
    with graph.as_default(), graph.device(device):
        graph.seed = seed
        global_step = v1.train.get_or_create_global_step()
        features, labels = _placeholders(dataset, with_labels=True)
        outputs = spec.forward(features, dataset)
        metrics = _metrics(outputs, labels, dataset)
        # float32, as a Python float given to the optimizer became; it casts to each variable
        rate = v1.placeholder_with_default(tf.constant(spec.learning_rate, tf.float32), [],
                                           name=LEARNING_RATE)
        train_op = spec.optimizer(rate).minimize(metrics[0], global_step=global_step)
        contract.attach_training(features, labels, metrics, train_op, dataset)
    return graph


def build_serving_graph(spec: ModelSpec, dataset: datasets.Dataset,
                        assets_dir: Path) -> ServingGraph:
    """Forward pass only: no labels, loss, optimizer or gradients. Classifiers also return class
    names read from ``labels.txt``, an asset copied into the SavedModel."""
    graph = tf.Graph()
    with graph.as_default():
        features, _ = _placeholders(dataset, with_labels=False)
        outputs = spec.forward(features, dataset)
        contract.attach_dataset(dataset)
        assets, main_op = [], None
        if dataset.task == "regression":
            named = {"predictions": tf.identity(outputs, name="predictions")}
        else:
            labels_file = Path(assets_dir) / "labels.txt"
            labels_file.write_text("".join(f"{name}\n" for name in dataset.class_names))
            path = tf.constant(str(labels_file), name="labels_path")
            table = tf.lookup.StaticHashTable(
                tf.lookup.TextFileInitializer(
                    path, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                    tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="UNKNOWN")
            probabilities = tf.nn.softmax(outputs, name="probabilities")
            named = {"probabilities": probabilities,
                     "classes": table.lookup(tf.argmax(probabilities, axis=1), name="classes")}
            # TextFileInitializer registers its file as an asset itself.
            assets = v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS)
            main_op = v1.tables_initializer(name="init_tables")
        signature = v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={contract.INPUT_KEY: features}, outputs=named)
    return ServingGraph(graph, {contract.SIGNATURE_KEY: signature}, assets, main_op)


def applied_learning_rates(train_op: tf.Operation) -> list[tf.Tensor]:
    """The rate inputs of the update ops that ``train_op`` runs (gradient descent's ``alpha``,
    Adam's ``lr``), in name order: the rate a step applies, read from the graph, however it was
    built. Evaluated with a step's feeds, they give the rate that step uses."""
    seen, todo, rates = set(), [train_op], []
    while todo:
        op = todo.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        names = [arg.name for arg in op.op_def.input_arg]
        rates += [op.inputs[names.index(n)] for n in ("alpha", "lr") if n in names]
        todo += list(op.control_inputs) + [tensor.op for tensor in op.inputs]
    return sorted(rates, key=lambda tensor: tensor.name)
