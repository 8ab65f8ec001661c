"""The loader: loads one version and checks it can run, by the warm path or the full one.

- **Warm**: the version's graph is the one already imported for the live version (same
  fingerprint: meta graph and asset contents). Its variables are restored into that graph's
  standby session, a SavedModel's main op runs, and one warm-up run follows. About 1 ms.
- **Full**: anything else (the first version, a changed graph, changed assets). A new graph is
  imported (``import_meta_graph`` + restore, or the SavedModel loader) into a new session.

It reads nothing but the export and ``shared.contract``. Any failure is a ``LoadError``; the
session it was loading into is closed, never reused, so the live version is never affected by a
bad one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from consumer import graphs
from consumer.signatures import Signature
from consumer.graphs import ImportedGraph
from shared import contract, datasets, layout
from shared.tfcompat import cause, tf, v1

EVALUATE, TRAIN, SERVE = "evaluate", "train", "serve"
WARM, FULL = "warm", "full"


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
    imported: ImportedGraph
    session: v1.Session
    phases: dict[str, float]  # seconds: fingerprint, import, restore, warm_up (and gate)
    load: str  # WARM or FULL
    metrics: dict[str, float] | None = None  # its evaluation, once taken (serve mode's gate)
    gate_data: str | None = None  # the dataset (spec JSON) the gate scored it on

    graph = property(lambda self: self.imported.graph)
    training = property(lambda self: self.imported.training)
    serving = property(lambda self: self.imported.serving)
    signatures = property(lambda self: self.imported.signatures)

    @property
    def load_seconds(self) -> float:
        return sum(self.phases.values())

    @property
    def dataset(self):
        """The dataset its graph names (our contract), or None for any other SavedModel."""
        contract_view = self.serving or self.training
        return contract_view.dataset if contract_view is not None else None

    def run(self, feeds: dict[str, object], fetches: tuple[str, ...]) -> list:
        """Fetch these graph tensors with these feeds (graph tensor name -> array), through a
        callable of this version's session."""
        names = tuple(feeds)
        return self.imported.callable(self.session, names, fetches)(*feeds.values())

    def close(self) -> None:
        """The version is out of use: its session goes back to its graph as the standby."""
        self.imported.give_back(self.session)


def load(version: layout.Version, purpose: str, current: ImportedGraph | None = None) -> Loaded:
    """Load ``version`` for ``purpose`` (EVALUATE, TRAIN or SERVE) and warm it up with one run;
    warm into ``current`` (the live version's graph) when the graph is the same.

    SavedModels load tag ``serve`` to evaluate or serve and ``train`` to continue training;
    checkpoints load through ``import_meta_graph`` and the Saver's restore.
    """
    tag = contract.TRAIN_TAG if purpose == TRAIN else contract.SERVE_TAG
    phases = {}
    mark = time.perf_counter()
    try:
        _check_bounds(version)
        key = graphs.graph_key(version, tag)
    except Exception as err:  # unreadable, unparsable, or no such tag
        raise _load_error(err) from err
    phases["fingerprint"] = time.perf_counter() - mark
    if current is not None and current.key == key:
        imported, load_kind = current, WARM
        session, _ = current.take_standby()
    else:
        imported, load_kind = None, FULL
        session = v1.Session(graph=tf.Graph(), config=_session_config(purpose))
    try:
        with session.graph.as_default():  # restore outside it would take TF2's eager path
            if imported is None:
                imported = _import(version, tag, purpose, session, key, phases)
                imported.data_stamp = _data_stamp(imported, version)
            else:
                mark = time.perf_counter()
                imported.restore(session, version)
                phases["restore"] = time.perf_counter() - mark
                _refresh_data(imported, version)
            mark = time.perf_counter()
            _warm_up(session, imported)
            phases["warm_up"] = time.perf_counter() - mark
    except Exception as err:  # anything a bad version can raise: TF, protobuf, OS, contract
        if imported is not None:
            imported.close_session(session)  # half-restored: never reused
        else:
            session.close()
        raise _load_error(err) from err
    return Loaded(version, imported, session, phases, load_kind)


def _data_stamp(imported: ImportedGraph, version: layout.Version) -> tuple:
    """Which bytes the graph's file-backed dataset (an npz) was read from: path, size, mtime."""
    view = imported.serving or imported.training
    if view is None:
        return ()
    stamps = []
    for relative in view.dataset.files:
        stat = (version.root / relative).stat()
        stamps.append((relative, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(stamps)


def _refresh_data(imported: ImportedGraph, version: layout.Version) -> None:
    """The warm path keeps the graph, and with it the dataset it read: a data file changed
    since is read again, so that a version is scored on its data as it is now, whichever path
    it was loaded by (the fingerprint covers the graph and its assets, not the data)."""
    stamp = _data_stamp(imported, version)
    if stamp == imported.data_stamp:
        return
    for view in (imported.serving, imported.training):
        if view is not None:
            view.dataset = datasets.load(view.dataset.to_json(), version.root)
    imported.data_stamp = stamp


def _check_bounds(version: layout.Version) -> None:
    """Before reading anything: the version's files are its own (no symlinks, nothing outside
    the export dir), and its meta graph is not too big to parse."""
    layout.check_confined(version)
    graph_file = (layout.saved_model_file(version.path) if version.kind == "savedmodel"
                  else Path(f"{version.path}.meta"))
    size = graph_file.stat().st_size
    if size > contract.MAX_GRAPH_BYTES:
        raise contract.ContractError(
            f"{graph_file.name} is {size / 2**20:.0f} MiB, over the limit of "
            f"{contract.MAX_GRAPH_BYTES / 2**20:.0f} MiB")


def _load_error(err: Exception) -> LoadError:
    return LoadError(f"{type(err).__name__}: {cause(err)}"[:500])


def _import(version: layout.Version, tag: str, purpose: str, session: v1.Session,
            key: str, phases: dict[str, float]) -> ImportedGraph:
    """The full path: import the graph into ``session``'s graph and restore the version."""
    graph, config = session.graph, _session_config(purpose)
    mark = time.perf_counter()
    if version.kind == "savedmodel":
        # The SavedModel loader imports and restores in one call; its restore is not split out.
        # Devices are cleared on both paths: a cluster's training graph names /job:ps tasks
        # that do not exist here.
        meta_graph = v1.saved_model.loader.load(session, [tag], str(version.path),
                                                clear_devices=True)
        imported = ImportedGraph(graph, key, meta_graph.saver_def, meta_graph, config,
                                 for_requests=purpose == SERVE)
        phases["import"] = time.perf_counter() - mark
        # Its restore was the SavedModel loader's, here; the next ones go by its size.
        imported.big = purpose == SERVE and \
            graphs.variable_bytes(version) >= graphs.BIG_BYTES
        if tag == contract.TRAIN_TAG:
            imported.training = contract.read_training(graph, version.root)
            return imported
        if purpose != SERVE or contract.names_dataset(graph):
            # our contract: required to evaluate, optional to serve (any SavedModel serves)
            imported.serving = contract.read_serving(graph, meta_graph, version.root)
        if purpose == SERVE:  # parsed once per graph here, not on every request
            imported.signatures = {name: Signature.from_proto(proto)
                                   for name, proto in meta_graph.signature_def.items()}
        return imported
    saver = v1.train.import_meta_graph(f"{version.path}.meta", clear_devices=True)
    if saver is None:
        raise contract.ContractError("meta graph has no variables to restore")
    imported = ImportedGraph(graph, key, saver.saver_def, config=config,
                             for_requests=purpose == SERVE)
    imported.training = contract.read_training(graph, version.root)
    phases["import"] = time.perf_counter() - mark
    mark = time.perf_counter()
    imported.restore(session, version)
    phases["restore"] = time.perf_counter() - mark
    return imported


def _warm_up(session: v1.Session, imported: ImportedGraph) -> None:
    """One small run, of exactly what will be asked of the session: its first run of a given
    set of feeds and fetches is the slow one, and a version that cannot run on its own dataset
    should fail here, before it replaces anything."""
    training, serving = imported.training, imported.serving
    if serving is None and training is None:
        return  # not written to our contract: the server replays its warm-up requests instead
    features, labels = (serving or training).dataset.eval_split
    signature = imported.signatures.get(contract.SIGNATURE_KEY)
    # Through callables, as requests run: on the warm path the standby session has made them
    # already, and the check costs a tenth of a Session.run.
    if signature is not None:  # serve mode: the callable a request for all outputs will use
        run = imported.callable(session, (serving.features.name,), signature.fetches())
        run(features[:1].astype(serving.features.dtype.as_numpy_dtype))
    elif serving is not None:
        run = imported.callable(session, (serving.features.name,), (serving.output.name,))
        run(features[:1].astype(serving.features.dtype.as_numpy_dtype))
    else:
        run = imported.callable(session, (training.features.name, training.labels.name),
                                tuple(t.name for t in training.metrics.values()))
        run(features[:1].astype(training.features.dtype.as_numpy_dtype),
            labels[:1].astype(training.labels.dtype.as_numpy_dtype))
