"""Graph keys: whether two versions load the same graph, so that the second can be restored
into the first one's graph (the consumer's warm swap) rather than imported anew.

A key is a sha256 of the meta graph a version loads, with asset paths blanked out (the
writer's staging path is baked into asset constants, and the SavedModel loader feeds the real
path anyway) and a TF2 export's traced functions renamed canonically, plus the content of
every asset file. A checkpoint's key is the hash of its ``.meta`` file.

Computing a SavedModel's key means parsing ``saved_model.pb`` and rewriting it: about 0.85 ms
for the linear model, the largest part of a warm load. So the writer computes the key of each
meta graph once, at its commit, and records it in the version's ``commit.json`` beside the
sha256 of ``saved_model.pb`` and of each asset file it came from. A reader takes the recorded
key when the files it finds hash the same (0.06 ms for the linear model), and computes the key
itself otherwise: exports from other writers, TF Serving's layout, a version whose graph or
assets changed after its commit.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from google.protobuf import text_format

from shared import contract, layout
from shared.tfcompat import tf  # noqa: F401 - TensorFlow's protos need it loaded

from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow.python.saved_model import loader_impl  # noqa: E402

RULE = "k1"  # every key starts with the rule that made it: keys made by another never match


def checkpoint_key(prefix: Path) -> str:
    with open(f"{prefix}.meta", "rb") as handle:
        return f"{RULE}:{hashlib.file_digest(handle, 'sha256').hexdigest()}"


def savedmodel_key(path: Path, tag: str) -> str:
    """The key of the meta graph tagged ``tag`` in the SavedModel at ``path``: the one its
    writer recorded if ``saved_model.pb`` is still what it was computed from."""
    data, model_file = _read(path)
    recorded = _recorded(path)
    if tag in recorded.get("graph_keys", {}) and recorded.get("files") == _digests(path, data):
        return recorded["graph_keys"][tag]
    model = _parse(data, model_file)
    meta_graph = next((m for m in model.meta_graphs if tag in m.meta_info_def.tags), None)
    if meta_graph is None:
        raise contract.ContractError(f"SavedModel has no meta graph tagged {tag!r}")
    return _key(path, meta_graph)


def record(path: Path) -> dict:
    """For the writer, before its commit: the keys of every tag's meta graph in the staged
    SavedModel at ``path``, and the hash of the file they come from (for ``commit.json``)."""
    data, model_file = _read(path)
    model = _parse(data, model_file)
    keys: dict[str, str] = {}
    for meta_graph in model.meta_graphs:  # the first meta graph with a tag is the one loaded
        for tag in meta_graph.meta_info_def.tags:
            if tag not in keys:
                copy = type(meta_graph)()
                copy.CopyFrom(meta_graph)  # _key edits what it is given
                keys[tag] = _key(path, copy)
    return {"graph_keys": keys, "files": _digests(path, data)}


def asset_feeds(export_dir: Path, meta_graph) -> dict[str, str]:
    """Asset tensor name -> that asset's path in ``export_dir``, as the SavedModel loader feeds."""
    return {name: path.decode() if isinstance(path, bytes) else path
            for name, path in loader_impl.get_asset_tensors(str(export_dir), meta_graph).items()}


def _read(path: Path) -> tuple[bytes, Path]:
    model_file = layout.saved_model_file(path)
    return model_file.read_bytes(), model_file


def _parse(data: bytes, model_file: Path):
    """The ``SavedModel`` message of ``saved_model.pb``, or of its text form ``.pbtxt``."""
    model = saved_model_pb2.SavedModel()
    if model_file.suffix == ".pbtxt":
        text_format.Parse(data.decode("utf-8"), model)
    else:
        model.ParseFromString(data)
    return model


def _digests(path: Path, data: bytes) -> dict[str, str]:
    """sha256 of ``saved_model.pb`` (given as ``data``) and of every file under ``assets/``:
    what a key is computed from, so a recorded key stands only while they are unchanged."""
    digests = {"saved_model.pb": hashlib.sha256(data).hexdigest()}
    assets = path / "assets"
    for asset in sorted(assets.rglob("*")) if assets.is_dir() else ():
        if asset.is_file():
            with open(asset, "rb") as handle:
                digests[str(asset.relative_to(path))] = \
                    hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def _recorded(path: Path) -> dict:
    try:
        recorded = json.loads((path / layout.COMMIT_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) and \
        isinstance(recorded.get("graph_keys", {}), dict) else {}


def _key(path: Path, meta_graph) -> str:
    """The key of ``meta_graph`` (edited in place) with the assets of the SavedModel at ``path``."""
    assets = asset_feeds(path, meta_graph)
    asset_nodes = {name.split(":")[0] for name in assets}
    for node in meta_graph.graph_def.node:
        if node.name in asset_nodes:
            node.attr["value"].Clear()
    digest = hashlib.sha256(_canonical_bytes(meta_graph))
    inside = path.resolve()
    for name in sorted(assets):
        asset = Path(assets[name])
        if asset.is_symlink() or not asset.resolve().is_relative_to(inside):
            raise contract.ContractError(f"asset {asset.name} lies outside its SavedModel")
        digest.update(name.encode() + b"\0")
        with open(asset, "rb") as handle:  # in chunks: an asset may be large
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return f"{RULE}:{digest.hexdigest()}"


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
    # A map is printed sorted by its keys, so the object graph's concrete functions (keyed by
    # function name) are renamed here, before printing: renamed after, they would keep the
    # order of their numbered names, which flips when two numbers straddle a power of ten
    # (``signature_wrapper_995`` and ``_1002``) and the same graph would get another key.
    concrete = meta_graph.object_graph_def.concrete_functions
    renamed = []
    for name, function in concrete.items():
        copy = type(function)()
        copy.CopyFrom(function)
        renamed.append((names.get(name, name), copy))
    concrete.clear()
    for name, function in renamed:
        concrete[name].CopyFrom(function)
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
