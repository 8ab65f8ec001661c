"""The graph contract: what every exported meta graph carries, and how a reader finds it.

Writers call ``attach_training`` / ``attach_serving`` while building; readers call
``read_training`` / ``read_serving`` on an imported graph. Nothing here knows any model: a graph
built by anyone that follows docs/CONTRACT.md reads the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared import datasets
from shared.tfcompat import tf, v1

FEED_DICT = "feed_dict"  # [features, labels] placeholders, in that order
FETCHES = "fetches"  # [loss, train_op]: one run with a feed is one training step
TRAIN_OP = "train_op"  # [train_op]
METRICS = "metrics"  # scalar batch means, named by their last name component
DATASET = "dataset"  # one bytes value: JSON naming a catalog dataset
TRAIN_TAG = "train"
SERVE_TAG = "serve"
SIGNATURE_KEY = "serving_default"
INPUT_KEY = "features"
# A reader refuses a meta graph file (``saved_model.pb`` or ``.meta``) bigger than this before it
# reads a byte of it. Variables belong in the checkpoint; a graph this big holds data it should not.
MAX_GRAPH_BYTES = 256 * 2**20


class ContractError(Exception):
    """A graph lacks something the contract requires."""


def metric_name(tensor: tf.Tensor) -> str:
    """``metrics/accuracy:0`` -> ``accuracy``."""
    return tensor.name.split(":")[0].split("/")[-1]


def attach_dataset(dataset: datasets.Dataset) -> None:
    v1.add_to_collection(DATASET, dataset.to_json())


def attach_training(features: tf.Tensor, labels: tf.Tensor, metrics: list[tf.Tensor],
                    train_op: tf.Operation, dataset: datasets.Dataset) -> None:
    """Record the training contract in the default graph, summaries included."""
    v1.add_to_collection(FEED_DICT, features)
    v1.add_to_collection(FEED_DICT, labels)
    loss = next(m for m in metrics if metric_name(m) == "loss")
    v1.add_to_collection(FETCHES, loss)
    v1.add_to_collection(FETCHES, train_op)
    if train_op not in v1.get_collection(TRAIN_OP):  # Optimizer.minimize already adds it
        v1.add_to_collection(TRAIN_OP, train_op)
    for metric in metrics:
        v1.add_to_collection(METRICS, metric)
        v1.summary.scalar(metric_name(metric), metric)
    attach_dataset(dataset)


def names_dataset(graph: tf.Graph) -> bool:
    """Whether the graph follows our contract at all: any SavedModel serves without it, but
    only a graph that names its dataset can be evaluated, trained or gated on data."""
    return bool(graph.get_collection(DATASET))


def read_dataset(graph: tf.Graph, root: Path | None = None) -> datasets.Dataset:
    """The dataset the graph names; ``root``, its export dir, holds a file-backed one's data."""
    specs = graph.get_collection(DATASET)
    if len(specs) != 1:
        raise ContractError(f"collection {DATASET!r} must hold one JSON value, found {len(specs)}")
    return datasets.load(specs[0], root)


@dataclass
class Training:
    """Handles a reader needs to evaluate or continue training an imported training graph."""

    features: tf.Tensor
    labels: tf.Tensor
    metrics: dict[str, tf.Tensor]
    train_op: tf.Operation
    global_step: tf.Variable
    dataset: datasets.Dataset


def read_training(graph: tf.Graph, root: Path | None = None) -> Training:
    feeds = graph.get_collection(FEED_DICT)
    if len(feeds) != 2:
        raise ContractError(f"collection {FEED_DICT!r} must hold [features, labels], "
                            f"found {len(feeds)} items")
    metrics = {metric_name(t): t for t in graph.get_collection(METRICS)}
    if "loss" not in metrics:
        raise ContractError(f"collection {METRICS!r} has no 'loss' tensor")
    train_ops = graph.get_collection(TRAIN_OP)
    if not train_ops:
        raise ContractError(f"collection {TRAIN_OP!r} is empty")
    global_step = v1.train.get_global_step(graph)
    if global_step is None:
        raise ContractError("graph has no global step")
    return Training(feeds[0], feeds[1], metrics, train_ops[0], global_step,
                    read_dataset(graph, root))


@dataclass
class ServingGraph:
    """An inference-only graph and what ``Builder.add_meta_graph`` needs to save it: a writer
    hands one to ``Publisher.export_savedmodel`` for the ``serve`` tag."""

    graph: tf.Graph
    signature_def_map: dict  # at least SIGNATURE_KEY: features in, the dataset's output out
    assets_collection: list  # asset file tensors, e.g. a vocabulary; may be empty
    main_op: tf.Operation | None  # run after restore, e.g. to fill lookup tables


@dataclass
class Serving:
    """The serving signature's input and the output the catalog scores."""

    features: tf.Tensor
    output: tf.Tensor
    dataset: datasets.Dataset


def read_serving(graph: tf.Graph, meta_graph_def, root: Path | None = None) -> Serving:
    signature = meta_graph_def.signature_def.get(SIGNATURE_KEY)
    if signature is None:
        raise ContractError(f"meta graph has no {SIGNATURE_KEY!r} signature")
    dataset = read_dataset(graph, root)
    # Protobuf message maps insert a default on a missing key, so ask first.
    if INPUT_KEY not in signature.inputs or dataset.output_key not in signature.outputs:
        raise ContractError(f"signature {SIGNATURE_KEY!r} needs input {INPUT_KEY!r} and "
                            f"output {dataset.output_key!r}")
    return Serving(graph.get_tensor_by_name(signature.inputs[INPUT_KEY].name),
                   graph.get_tensor_by_name(signature.outputs[dataset.output_key].name),
                   dataset)
