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

A big model (``BIG_BYTES`` of variables or more) is swapped differently, so that requests do not
feel it (issue 31):

- Its restore runs on one background thread at a lower CPU priority (``BACKGROUND_NICE``), with
  TF's kernels on that thread (the restore's own reader threads are created there and inherit
  its priority): a request's thread wins the CPU whenever both want it, and the restore takes
  what requests leave.
- It keeps no standby: a version is restored into a new session of the graph, whose variables
  are not yet initialized, so TF's ``Assign`` takes the restored buffer as it is. Restoring into
  a used session would copy the whole table once more (on TF's intra-op threads, at the
  requests' priority) and hold three copies at the peak: live, standby and the restored one.
  So a swap holds two copies at most, and one between swaps.
- The old version's session closes on that background thread too, never on the thread of the
  request that released it last: unmapping a GiB takes tens of ms.

TF Serving loads and unloads on a pool of ``num_load_unload_threads`` at the requests' priority
(``tensorflow_serving/core/aspired_versions_manager.h``, ``Options``); the lower priority here is
ours (the README's "where we differ").
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from pathlib import Path

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
BIG_BYTES = 64 * 2 ** 20  # a version with this many bytes of variables is a big one
BACKGROUND_NICE = 10  # added to its thread's nice: ~1/10 of a request thread's CPU share


def _lower_priority() -> None:
    """Runs first on the background thread: its own priority, not the process's (on Linux a
    nice value is per thread, and threads it creates inherit it)."""
    try:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me)
                                                + BACKGROUND_NICE))
    except (OSError, AttributeError):  # not permitted, or not Linux: it runs at normal priority
        pass


_background = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="big-restore", initializer=_lower_priority)


def in_background(work, *args):
    """Run ``work(*args)`` on the background thread and wait for its result (or its error)."""
    return _background.submit(work, *args).result()


def variable_bytes(version: layout.Version) -> int:
    """The size of a version's variables on disk (its data files): cheap, one directory read."""
    prefix = version.path / "variables" / "variables" if version.kind == "savedmodel" \
        else Path(version.path)
    try:
        return sum(entry.stat().st_size for entry in os.scandir(prefix.parent)
                   if entry.name.startswith(f"{prefix.name}.data-"))
    except OSError:
        return 0


class ImportedGraph:
    """One imported graph, how to restore a version into a session of it, and its idle session."""

    STANDBYS = 1  # idle sessions kept; with the live one, two per graph

    def __init__(self, graph: tf.Graph, key: str, saver_def, meta_graph=None,
                 config: v1.ConfigProto | None = None, for_requests: bool = False) -> None:
        """``for_requests``: it serves requests (serve mode), so a big version of it is
        restored at background priority; elsewhere nothing competes with the restore."""
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
        self.for_requests = for_requests
        self.big = False  # it serves requests and its variables are BIG_BYTES or more
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
        key = (id(session), feeds, fetches, targets, caller_thread)
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
        """A version's session is out of use: keep it as the standby, or close it (a big
        model's on the background thread, not on the caller's: it may be a request's)."""
        with self._lock:
            keep = not self._retired and not self.big and len(self._idle) < self.STANDBYS
            if keep:
                self._idle.append(session)
        if keep:
            return
        if self.big:
            _background.submit(self.close_session, session)
        else:
            self.close_session(session)

    def retire(self) -> None:
        """A newer graph replaced this one: close the idle session now, the others on return."""
        with self._lock:
            self._retired, idle, self._idle = True, self._idle, []
        for session in idle:
            self.close_session(session)

    def restore(self, session: v1.Session, version: layout.Version) -> None:
        """Write ``version``'s variables into ``session`` (and run a SavedModel's main op); a
        big version's on the background thread, at its lower priority."""
        self.big = self.for_requests and variable_bytes(version) >= BIG_BYTES
        if self.big:
            in_background(self._restore_in_graph, session, version)
        else:
            self._restore(session, version, False)

    def _restore_in_graph(self, session: v1.Session, version: layout.Version) -> None:
        with session.graph.as_default():  # the default graph is per thread
            self._restore(session, version, True)

    def _restore(self, session: v1.Session, version: layout.Version,
                 caller_thread: bool) -> None:
        prefix = version.path / "variables" / "variables" if version.kind == "savedmodel" \
            else version.path
        # Through a callable made once per session: a quarter of Session.run's cost (0.1 ms
        # against 0.34 for the linear model), most of a warm restore of a small model. A small
        # model's restore runs on the session's inter-op pool; a big one's kernels run on the
        # background thread itself, where TF's reader threads for big tensors start too.
        restore = self._callable(session, (self.saver_def.filename_tensor_name,), (),
                                 (self.saver_def.restore_op_name,), caller_thread=caller_thread)
        restore(np.array(str(prefix).encode()))
        if self.main_op is not None:
            feeds = graphkey.asset_feeds(version.path, self.meta_graph)
            main_op = self._callable(session, tuple(feeds), (), (self.main_op,),
                                     caller_thread=caller_thread)
            main_op(*(np.array(path.encode()) for path in feeds.values()))
