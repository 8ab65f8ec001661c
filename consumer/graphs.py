"""Imported graphs and their sessions: what makes the warm swap possible.

Nearly every version a producer publishes has the same graph as the one before, and differs only
in its variables. Importing that graph again costs most of a load (about 8 ms of 15-20 ms for
the mlp); restoring the next version's variables into a second, already-used session of the
graph already imported costs about 0.3 ms. So a graph is imported once and keeps up to two
sessions: the live one, and a standby that the next version is restored into.

A session goes back to its graph only once the version it held is out of use (in serve mode,
once its last request has ended), so a restore never writes under a request. A new graph
retires the old one: its sessions close as they come back.

Whether two versions share a graph is decided by a fingerprint of the meta graph they load,
with asset paths blanked out (the writer's staging path is baked into asset constants, and the
SavedModel loader feeds the real path anyway), plus the content of every asset file.
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path

from google.protobuf import text_format

from shared import contract, layout
from shared.tfcompat import tf, v1

from tensorflow.core.protobuf import config_pb2, saved_model_pb2  # noqa: E402
from tensorflow.python.saved_model import loader_impl  # noqa: E402


def fingerprint(version: layout.Version, tag: str) -> str:
    """A key that is equal for two versions exactly when they load the same graph and assets."""
    if version.kind == "checkpoint":
        return hashlib.sha256(Path(f"{version.path}.meta").read_bytes()).hexdigest()
    model = saved_model_pb2.SavedModel()
    model.ParseFromString((version.path / "saved_model.pb").read_bytes())
    meta_graph = next((m for m in model.meta_graphs if tag in m.meta_info_def.tags), None)
    if meta_graph is None:
        raise contract.ContractError(f"SavedModel has no meta graph tagged {tag!r}")
    assets = asset_feeds(version.path, meta_graph)
    asset_nodes = {name.split(":")[0] for name in assets}
    for node in meta_graph.graph_def.node:  # in place: this parse is ours alone
        if node.name in asset_nodes:
            node.attr["value"].Clear()
    digest = hashlib.sha256(_canonical_bytes(meta_graph))
    inside = version.path.resolve()
    for name in sorted(assets):
        path = Path(assets[name])
        if path.is_symlink() or not path.resolve().is_relative_to(inside):
            raise contract.ContractError(f"asset {path.name} lies outside its SavedModel")
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as handle:  # in chunks: an asset may be large
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def _canonical_bytes(meta_graph) -> bytes:
    """The meta graph's bytes, with a TF2 export's traced functions made canonical. Each
    ``tf.saved_model.save`` of the same module numbers its functions anew
    (``__inference_call_23``, then ``_91``), lists them in another order, and records the
    numbers again as ``_user_specified_name``; two versions of one graph would never match.
    Functions are renamed in the order the graph first refers to them, and that attribute is
    blanked. A TF1 graph has no functions and is hashed as it is. (Parsed for this alone, so
    it is edited in place.)"""
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    if not library:
        return meta_graph.SerializeToString(deterministic=True)
    names: dict[str, str] = {}
    queue = list(_references(meta_graph.graph_def.node))
    while queue:
        name = queue.pop(0)
        if name in library and name not in names:
            names[name] = f"__function_{len(names)}"
            queue.extend(_references(library[name].node_def))
    for name in sorted(set(library) - set(names), key=lambda n: n.rstrip("0123456789")):
        names[name] = f"__function_{len(names)}"
    attrs = [node.attr for node in meta_graph.graph_def.node]
    for function in library.values():
        attrs += [node.attr for node in function.node_def]
        attrs += [arg.attr for arg in function.arg_attr.values()]
    for attr in attrs:
        if "_user_specified_name" in attr:
            attr["_user_specified_name"].s = b""
    ordered = sorted(library.values(), key=lambda f: int(names[f.signature.name].rsplit("_", 1)[1]))
    copies = [type(f)() for f in ordered]
    for copy, function in zip(copies, ordered):
        copy.CopyFrom(function)
    del meta_graph.graph_def.library.function[:]
    meta_graph.graph_def.library.function.extend(copies)
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(
        re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")(?!\w)")
    text = text_format.MessageToString(meta_graph, as_utf8=True)
    return pattern.sub(lambda match: names[match.group(0)], text).encode()


def _references(nodes):
    """The function names these nodes call or name in their attributes, in order."""
    for node in nodes:
        yield node.op
        for attr in node.attr.values():
            if attr.HasField("func"):
                yield attr.func.name
            yield from (f.name for f in attr.list.func)


def _init_op_name(graph: tf.Graph, meta_graph) -> str | None:
    """The op the SavedModel loader runs after a restore: a TF2 export's
    ``__saved_model_init_op`` signature, or a TF1 main op or legacy init op."""
    if meta_graph is None:
        return None
    with graph.as_default():
        op = loader_impl.get_init_op(meta_graph)
    return op.name if op is not None else None


def asset_feeds(export_dir: Path, meta_graph) -> dict[str, str]:
    """Asset tensor name -> that asset's path in ``export_dir``, as the SavedModel loader feeds."""
    return {name: path.decode() if isinstance(path, bytes) else path
            for name, path in loader_impl.get_asset_tensors(str(export_dir), meta_graph).items()}


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
        self._idle: list[v1.Session] = []
        self._callables: dict[tuple, object] = {}  # (session, feeds, fetches) -> its callable
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
        key = (id(session), feeds, fetches)
        found = self._callables.get(key)
        if found is None:
            options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
            if len(self.graph.as_graph_def(add_shapes=False).node) <= CALLER_THREAD_NODES:
                options.run_options.inter_op_thread_pool = -1
            found = session._make_callable_from_options(options)
            with self._lock:
                self._callables[key] = found
        return found

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
        session.run(self.saver_def.restore_op_name, {self.saver_def.filename_tensor_name: str(prefix)})
        if self.main_op is not None:
            session.run(self.main_op, asset_feeds(version.path, self.meta_graph))
