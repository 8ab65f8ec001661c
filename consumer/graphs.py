"""Imported graphs and their sessions: what makes the warm swap possible.

Nearly every version a producer publishes has the same graph as the one before, and differs only
in its variables. Importing that graph again costs most of a load (about 8 ms of 15-20 ms for
the mlp); restoring the next version's variables into a second, already-used session of the
graph already imported costs about 0.3 ms. So a graph is imported once and keeps up to two
sessions: the live one, and a standby that the next version is restored into.

A session goes back to its graph only once the version it held is out of use (in serve mode,
once its last request has ended), so a restore never writes under a request. A new graph
retires the old one: its sessions close as they come back.

Whether two versions share a graph is decided by their keys (``shared.graphkey``): a hash of the
meta graph they load and its assets, recorded by the writer at commit or computed here.
"""

from __future__ import annotations

import threading

import numpy as np

from shared import contract, graphkey, layout
from shared.tfcompat import tf, v1

from tensorflow.core.protobuf import config_pb2  # noqa: E402
from tensorflow.python.saved_model import loader_impl  # noqa: E402


def graph_key(version: layout.Version, tag: str) -> str:
    """A key that is equal for two versions exactly when they load the same graph and assets."""
    if version.kind == "checkpoint":
        return graphkey.checkpoint_key(version.path)
    return graphkey.savedmodel_key(version.path, tag)


def _init_op_name(graph: tf.Graph, meta_graph) -> str | None:
    """The op the SavedModel loader runs after a restore: a TF2 export's
    ``__saved_model_init_op`` signature, or a TF1 main op or legacy init op."""
    if meta_graph is None:
        return None
    with graph.as_default():
        op = loader_impl.get_init_op(meta_graph)
    return op.name if op is not None else None


CALLER_THREAD_NODES = 2000  # graphs this small run each request on the calling thread


class ImportedGraph:
    """One imported graph, how to restore a version into a session of it, and its idle session."""

    STANDBYS = 1  # idle sessions kept; with the live one, two per graph

    def __init__(self, graph: tf.Graph, key: str, saver_def, meta_graph=None,
                 config: v1.ConfigProto | None = None) -> None:
        self.graph, self.key, self.saver_def, self.config = graph, key, saver_def, config
        self.meta_graph = meta_graph  # SavedModels: for asset feeds and the main op
        self.main_op = _init_op_name(graph, meta_graph)
        # What every version of this graph shares, set by the loader after the import:
        self.training: contract.Training | None = None  # checkpoints and the ``train`` tag
        self.serving: contract.Serving | None = None  # the ``serve`` tag
        self.signatures: dict = {}  # serve mode: key -> signatures.Signature, parsed once
        self.publisher = None  # train mode: its Saver is built once per graph, not per version
        self.data_stamp: tuple = ()  # the bytes its npz dataset was read from (consumer.loader)
        self._idle: list[v1.Session] = []
        self._callables: dict[tuple, object] = {}  # (session, feeds, fetches, targets) -> callable
        self._nodes: int | None = None
        self._retired = False
        self._lock = threading.Lock()

    def new_session(self) -> v1.Session:
        return v1.Session(graph=self.graph, config=self.config)

    def callable(self, session: v1.Session, feeds: tuple[str, ...], fetches: tuple[str, ...]):
        """A callable of ``session`` for these feeds and fetches, made once per session. It runs
        the graph as TF Serving's C++ session does: no Python-side check of a feed's shape
        against the tensor's static shape (TF's kernels check what they must), and about a fifth
        of ``Session.run``'s overhead. A small graph runs on the calling thread rather than
        TF's inter-op pool (TF's advice for simple graphs): one mlp predict took 30 us there,
        110 us through the pool, its context switches included."""
        return self._callable(session, feeds, fetches, (), caller_thread=self._small())

    def _callable(self, session: v1.Session, feeds: tuple[str, ...], fetches: tuple[str, ...],
                  targets: tuple[str, ...], caller_thread: bool):
        key = (id(session), feeds, fetches, targets)
        found = self._callables.get(key)
        if found is None:
            options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches),
                                                 target=list(targets))
            if caller_thread:
                options.run_options.inter_op_thread_pool = -1
            found = session._make_callable_from_options(options)
            with self._lock:
                self._callables[key] = found
        return found

    def _small(self) -> bool:
        if self._nodes is None:  # counted once: serializing a big graph is not free
            self._nodes = len(self.graph.as_graph_def(add_shapes=False).node)
        return self._nodes <= CALLER_THREAD_NODES

    def close_session(self, session: v1.Session) -> None:
        """Close a session of this graph and drop its callables."""
        with self._lock:
            for key in [k for k in self._callables if k[0] == id(session)]:
                del self._callables[key]
        session.close()

    def take_standby(self) -> tuple[v1.Session, bool]:
        """An idle session of this graph (warm: True), or a new one (False)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self.new_session(), False

    def give_back(self, session: v1.Session) -> None:
        """A version's session is out of use: keep it as the standby, or close it."""
        with self._lock:
            keep = not self._retired and len(self._idle) < self.STANDBYS
            if keep:
                self._idle.append(session)
        if not keep:
            self.close_session(session)

    def retire(self) -> None:
        """A newer graph replaced this one: close the idle session now, the others on return."""
        with self._lock:
            self._retired, idle, self._idle = True, self._idle, []
        for session in idle:
            self.close_session(session)

    def restore(self, session: v1.Session, version: layout.Version) -> None:
        """Write ``version``'s variables into ``session`` (and run a SavedModel's main op)."""
        prefix = version.path / "variables" / "variables" if version.kind == "savedmodel" \
            else version.path
        # Through a callable made once per session: a quarter of Session.run's cost (0.1 ms
        # against 0.34 for the linear model), most of a warm restore of a small model. The
        # inter-op pool stays: a big model's assigns run side by side there.
        restore = self._callable(session, (self.saver_def.filename_tensor_name,), (),
                                 (self.saver_def.restore_op_name,), caller_thread=False)
        restore(np.array(str(prefix).encode()))
        if self.main_op is not None:
            feeds = graphkey.asset_feeds(version.path, self.meta_graph)
            main_op = self._callable(session, tuple(feeds), (), (self.main_op,),
                                     caller_thread=False)
            main_op(*(np.array(path.encode()) for path in feeds.values()))
