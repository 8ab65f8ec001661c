"""``python -m shared.inspect PATH``: what a checkpoint's meta graph or a SavedModel holds.

PATH is a ``.meta`` file, a checkpoint prefix, a SavedModel directory, or a whole export dir
(then the newest version of each kind). For each meta graph it shows the parts of a
MetaGraphDef: meta info, graph, saver def, collections, signatures and asset files. For
checkpoints it also shows the variables and the global step. ``--out DIR`` writes
``graphdef.pbtxt``, ``get_operations.txt`` and ``metagraph.pbtxt`` for each meta graph.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from shared import cli, layout

PROG = "inspect"


class InspectError(Exception):
    """PATH is none of the things inspect reads."""


@dataclass
class Source:
    """One meta graph to show, and where it came from."""

    label: str  # e.g. "checkpoint-2000" or "savedmodel-2000-serve"
    path: Path
    meta_graph: object  # MetaGraphDef
    checkpoint: Path | None = None  # the prefix, for variables and the global step
    _graph: object = None

    @property
    def graph(self):
        """The meta graph imported into a fresh ``tf.Graph``, as a reader would see it."""
        if self._graph is None:
            from shared.tfcompat import tf, v1

            copy = type(self.meta_graph)()
            copy.CopyFrom(self.meta_graph)  # import_meta_graph edits its argument in place
            self._graph = tf.Graph()
            with self._graph.as_default():
                v1.train.import_meta_graph(copy, clear_devices=True)
        return self._graph


def find_sources(path: Path) -> list[Source]:
    from shared.tfcompat import tf  # noqa: F401 - first, so TF's environment is set

    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

    path = Path(path)
    if (path / layout.CHECKPOINTS).is_dir() or (path / layout.SAVEDMODELS).is_dir():
        found = [layout.latest_checkpoint(path), layout.latest_savedmodel(path)]
        if not any(found):
            raise InspectError(f"{path} is an export dir with no committed version yet")
        return [s for version in found if version for s in find_sources(version.path)]
    try:
        if path.is_dir():
            model_file = layout.saved_model_file(path)
            if not model_file.is_file():
                raise InspectError(f"{path} is a directory with no saved_model.pb and no versions")
            model = saved_model_pb2.SavedModel()
            if model_file.suffix == ".pbtxt":
                text_format.Parse(model_file.read_text(), model)
            else:
                model.ParseFromString(model_file.read_bytes())
            return [Source(f"savedmodel-{path.name}-{'-'.join(m.meta_info_def.tags)}", path, m)
                    for m in model.meta_graphs]
        meta_file = path if path.suffix == ".meta" else Path(f"{path}.meta")
        if not meta_file.is_file():
            raise InspectError(f"{path} is not a .meta file, checkpoint prefix, SavedModel or "
                               "export dir")
        meta_graph = meta_graph_pb2.MetaGraphDef()
        meta_graph.ParseFromString(meta_file.read_bytes())
    except (DecodeError, text_format.ParseError, UnicodeDecodeError) as err:
        raise InspectError(f"{path} does not parse as a TensorFlow protobuf: {err}") from err
    prefix = meta_file.with_suffix("")
    has_variables = Path(f"{prefix}.index").is_file()
    return [Source(f"checkpoint-{layout.checkpoint_step(prefix.name) or prefix.name}", meta_file,
                   meta_graph, prefix if has_variables else None)]


def describe(source: Source) -> dict:
    """Every section of one meta graph as plain data (the ``--json`` form)."""
    meta, graph = source.meta_graph, source.graph
    info = meta.meta_info_def
    report = {
        "label": source.label,
        "path": str(source.path),
        "meta_info": {"tags": list(info.tags), "tensorflow_version": info.tensorflow_version,
                      "stripped_op_list": sorted(op.name for op in info.stripped_op_list.op)},
        "graph": {"node_count": len(meta.graph_def.node),
                  "op_types": dict(Counter(n.op for n in meta.graph_def.node).most_common())},
        "saver_def": _fields(meta.saver_def) if meta.HasField("saver_def") else None,
        "collections": {key: {"kind": meta.collection_def[key].WhichOneof("kind"),
                              "members": [_member(m) for m in graph.get_collection(key)]}
                        for key in sorted(graph.get_all_collection_keys())},
        "signatures": {key: _signature(sig) for key, sig in sorted(meta.signature_def.items())},
        "asset_files": _assets(meta),
    }
    if source.checkpoint is not None:
        report.update(_checkpoint_variables(source.checkpoint))
    return report


def _checkpoint_variables(prefix: Path) -> dict:
    """The variables and global step a checkpoint's ``.index`` and ``.data`` hold."""
    from shared.tfcompat import tf

    try:
        found = {"variables": dict(tf.train.list_variables(str(prefix)))}
        if "global_step" in found["variables"]:
            found["global_step"] = int(tf.train.load_variable(str(prefix), "global_step"))
    except (tf.errors.OpError, ValueError) as err:  # a garbage .index, a missing .data shard
        message = getattr(err, "message", None) or str(err)
        raise InspectError(f"checkpoint {prefix} cannot be read: "
                           f"{message.strip().splitlines()[0][:300]}") from None
    return found


def _fields(message) -> dict:
    return {field.name: (value.decode() if isinstance(value, bytes) else value)
            for field, value in message.ListFields()}


def _member(item) -> str:
    """A collection member as the imported graph holds it: a tensor, op or variable by name."""
    if isinstance(item, bytes):
        return item.decode(errors="replace")
    name = getattr(item, "name", None)
    return name if isinstance(name, str) else type(item).__name__

def _tensor_info(info) -> dict:
    from shared.tfcompat import tf

    shape = ([d.size for d in info.tensor_shape.dim] if not info.tensor_shape.unknown_rank
             else None)
    return {"name": info.name, "dtype": tf.dtypes.as_dtype(info.dtype).name, "shape": shape}


def _signature(signature) -> dict:
    return {"method_name": signature.method_name,
            "inputs": {k: _tensor_info(v) for k, v in sorted(signature.inputs.items())},
            "outputs": {k: _tensor_info(v) for k, v in sorted(signature.outputs.items())}}


def _assets(meta) -> list[dict]:
    """Asset files from ``asset_file_def`` and, where the TF1 Builder records them, from the
    ``saved_model_assets`` collection."""
    from tensorflow.core.protobuf import meta_graph_pb2

    assets = [{"filename": a.filename, "tensor": a.tensor_info.name} for a in meta.asset_file_def]
    if "saved_model_assets" in meta.collection_def:
        for packed in meta.collection_def["saved_model_assets"].any_list.value:
            asset = meta_graph_pb2.AssetFileDef()
            packed.Unpack(asset)
            assets.append({"filename": asset.filename, "tensor": asset.tensor_info.name})
    return assets


def render(report: dict) -> str:
    """The human form: one section per part of the MetaGraphDef."""
    lines = [f"== {report['label']}  ({report['path']})"]
    info = report["meta_info"]
    lines += ["-- meta info", f"   tags: {', '.join(info['tags']) or '(none)'}",
              f"   tensorflow version: {info['tensorflow_version']}",
              f"   stripped op list ({len(info['stripped_op_list'])}): "
              f"{', '.join(info['stripped_op_list'])}"]
    graph = report["graph"]
    lines += ["-- graph", f"   nodes: {graph['node_count']}"]
    lines += [f"   {count:>5}  {op}" for op, count in graph["op_types"].items()]
    lines.append("-- saver def")
    lines += [f"   {k}: {v}" for k, v in (report["saver_def"] or {}).items()] or ["   (none)"]
    lines.append("-- collections")
    for key, collection in report["collections"].items():
        lines.append(f"   {key} ({collection['kind']}, {len(collection['members'])})")
        lines += [f"      {member}" for member in collection["members"]]
    lines.append("-- signatures")
    for key, signature in report["signatures"].items():
        lines.append(f"   {key}  method {signature['method_name']}")
        for side in ("inputs", "outputs"):
            for name, t in signature[side].items():
                lines.append(f"      {side[:-1]:<6} {name}: {t['dtype']} {t['shape']}  ({t['name']})")
    if not report["signatures"]:
        lines.append("   (none)")
    lines.append("-- asset files")
    lines += [f"   {a['filename']}  <- {a['tensor']}" for a in report["asset_files"]] or ["   (none)"]
    if "variables" in report:
        lines.append("-- checkpoint variables")
        lines += [f"   {name}: {shape}" for name, shape in report["variables"].items()]
        if "global_step" in report:
            lines.append(f"   global step: {report['global_step']}")
    return "\n".join(lines)


def write_files(source: Source, out: Path) -> Path:
    """``graphdef.pbtxt``, ``get_operations.txt`` and ``metagraph.pbtxt`` for one meta graph."""
    from google.protobuf import text_format

    target = Path(out) / source.label
    target.mkdir(parents=True, exist_ok=True)
    graph = source.graph
    (target / "graphdef.pbtxt").write_text(text_format.MessageToString(graph.as_graph_def()))
    (target / "get_operations.txt").write_text(
        "".join(f"{op.name}\t{op.type}\n" for op in graph.get_operations()))
    (target / "metagraph.pbtxt").write_text(text_format.MessageToString(source.meta_graph))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--out", type=Path, help="write the text files for each meta graph here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    if not args.path.exists() and not Path(f"{args.path}.meta").exists():
        cli.fail(PROG, f"{args.path} does not exist")
    try:
        sources = find_sources(args.path)
        reports = [describe(source) for source in sources]
    except InspectError as err:
        cli.fail(PROG, str(err))
    if args.out:
        for source, report in zip(sources, reports):
            report["files"] = str(write_files(source, args.out))
    print(json.dumps(reports, indent=2) if args.json else "\n\n".join(map(render, reports)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
