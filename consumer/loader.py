"""The loader: loads one version into its own graph and session, and checks it can run.

It reads nothing but the export and ``shared.contract``. Any failure is a ``LoadError`` and
leaves no session open, so the version in use is never affected by a bad one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from consumer import tensors
from shared import contract, layout
from shared.tfcompat import tf, v1

EVALUATE, TRAIN, SERVE = "evaluate", "train", "serve"


def _session_config(purpose: str) -> v1.ConfigProto | None:
    """A serving session gets its own inter-op threads: by default every session shares one
    process-wide pool, and a load's restore would then queue behind requests (or they behind it),
    which is the latency spike TF Serving users report around swaps."""
    return v1.ConfigProto(use_per_session_threads=True) if purpose == SERVE else None


class LoadError(Exception):
    """A version could not be loaded or failed its first run."""


@dataclass
class Loaded:
    version: layout.Version
    graph: tf.Graph
    session: v1.Session
    training: contract.Training | None  # for checkpoints and the ``train`` tag
    serving: contract.Serving | None  # for the ``serve`` tag
    phases: dict[str, float]  # seconds spent importing, restoring and warming up
    signatures: dict[str, tensors.Signature] = field(default_factory=dict)  # serve mode's
    metrics: dict[str, float] | None = None  # its evaluation, once taken (serve mode's gate)

    @property
    def load_seconds(self) -> float:
        return sum(self.phases.values())

    @property
    def dataset(self):
        return (self.serving or self.training).dataset

    def close(self) -> None:
        self.session.close()


def load(version: layout.Version, purpose: str) -> Loaded:
    """Load ``version`` for ``purpose`` (EVALUATE, TRAIN or SERVE) and warm it up with one run.

    SavedModels load tag ``serve`` to evaluate or serve and ``train`` to continue training;
    checkpoints load through ``import_meta_graph`` and the Saver's restore.
    """
    phases, signatures = {}, {}
    started = time.perf_counter()
    graph = tf.Graph()
    session = v1.Session(graph=graph, config=_session_config(purpose))
    try:
        with graph.as_default():  # restore outside it would take TF2's eager path
            training, serving = _import(version, purpose, session, graph, phases, signatures)
            mark = time.perf_counter()
            _warm_up(session, training, serving)
            phases["warm_up"] = time.perf_counter() - mark
        phases["import"] = time.perf_counter() - started - phases["restore"] - phases["warm_up"]
    except Exception as err:  # anything a bad version can raise: TF, protobuf, OS, contract
        session.close()
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise LoadError(f"{type(err).__name__}: {first_line}"[:500]) from err
    return Loaded(version, graph, session, training, serving, phases, signatures)


def _import(version: layout.Version, purpose: str, session: v1.Session, graph: tf.Graph,
            phases: dict[str, float], signatures: dict):
    if version.kind == "savedmodel":
        # The SavedModel loader imports and restores in one call; its restore is not split out.
        tag = contract.TRAIN_TAG if purpose == TRAIN else contract.SERVE_TAG
        meta_graph = v1.saved_model.loader.load(session, [tag], str(version.path))
        phases["restore"] = 0.0
        if tag == contract.SERVE_TAG:
            if purpose == SERVE:  # parsed once here, not on every request
                signatures.update({key: tensors.Signature.from_proto(proto)
                                   for key, proto in meta_graph.signature_def.items()})
            return None, contract.read_serving(graph, meta_graph)
        return contract.read_training(graph), None
    saver = v1.train.import_meta_graph(f"{version.path}.meta", clear_devices=True)
    if saver is None:
        raise contract.ContractError("meta graph has no variables to restore")
    mark = time.perf_counter()
    saver.restore(session, str(version.path))
    phases["restore"] = time.perf_counter() - mark
    return contract.read_training(graph), None


def _warm_up(session: v1.Session, training: contract.Training | None,
             serving: contract.Serving | None) -> None:
    """One small run: the first run of a graph is the slow one, and a version that cannot run
    on its own dataset should fail here, before it replaces anything."""
    features, labels = (serving or training).dataset.eval_split
    if serving is not None:
        session.run(serving.output, {serving.features: features[:1]})
    else:
        session.run(training.metrics, {training.features: features[:1],
                                       training.labels: labels[:1]})
