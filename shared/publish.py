"""Publishing versions into an export dir with ``shared.layout``'s commit protocol.

Both processes publish: the producer into its export dir, the consumer (in train mode) into its
work dir, which is then an export dir in its own right.

Checkpoints: ``Saver.save()`` would rewrite the state file before writing ``.meta`` and delete old
checkpoints at that moment, so a reader could meet a committed checkpoint with no meta graph. We
call it with ``write_state=False, write_meta_graph=False``, write the meta graph ourselves,
fsync, and only then replace the state file; retention runs after the commit.

SavedModels: built in a staging directory, fsynced, renamed into place (``commit.commit_dir``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from shared import commit, contract, durable, graphkey, layout, logs
from shared.contract import ServingGraph
from shared.tfcompat import cause, tf, v1

from tensorflow.core.protobuf import saved_model_pb2

log = logs.get("publish")


# What a write to a full, failing or read-only disk raises: OSError from Python, and from TF's
# own file I/O an OpError (EFBIG and ENOSPC come back as OutOfRangeError or ResourceExhausted).
WRITE_ERRORS = (OSError, tf.errors.OpError)


class PublishError(Exception):
    """A version could not be written. What was staged for it is removed, and every committed
    version is as it was."""

    def __init__(self, kind: str, step: int, error: BaseException) -> None:
        self.kind, self.step, self.reason = kind, step, describe(error)
        super().__init__(f"{kind} {step} could not be written: {self.reason}")


def describe(error: BaseException) -> str:
    """One line for an I/O error, from Python or from TensorFlow."""
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{type(error).__name__}: {error.strerror}{where}"
    return f"{type(error).__name__}: {cause(error)[:300]}"


class Publisher:
    """Writes numbered checkpoints and SavedModels of one training graph."""

    def __init__(self, root: Path, graph: tf.Graph, *, keep_checkpoints: int = 5,
                 keep_checkpoint_every_hours: float | None = None, keep_exports: int = 5) -> None:
        self.root = Path(root)
        self.graph = graph
        self.keep_checkpoints = keep_checkpoints
        self.keep_exports = keep_exports
        self._keep_every = keep_checkpoint_every_hours * 3600 if keep_checkpoint_every_hours else None
        self._next_keep_time = time.time() + self._keep_every if self._keep_every else None
        self._entries = layout.read_checkpoint_entries(self.root)  # retention resumes from here
        self.visible_at: float | None = None  # just after the last commit's rename
        with graph.as_default():
            # One saver, made once: a Builder left to itself adds new save ops to the graph
            # on every export, and the graph would grow for as long as training runs. No
            # max_to_keep or keep_checkpoint_every_n_hours: TF applies them only with
            # write_state=True, which we never use. Retention is ours, after each commit.
            self.saver = v1.train.Saver(sharded=True, allow_empty=True, save_relative_paths=True)

    # -- checkpoints -------------------------------------------------------------------------

    def restore_latest(self, session: tf.compat.v1.Session) -> int | None:
        """Restore the newest committed checkpoint into ``session``; its step, or None."""
        latest = layout.latest_checkpoint(self.root)
        if latest is None:
            return None
        with self.graph.as_default():  # outside it, Saver takes TF2's eager path
            self.saver.restore(session, str(latest.path))
        return latest.step

    def save_checkpoint(self, session: tf.compat.v1.Session, step: int) -> Path | None:
        """Publish a checkpoint of ``session`` at ``step``; None if ``step`` is committed already.
        A committed version is never written over: a reader may be loading it right now.
        Raises PublishError if it cannot be written; what it wrote is removed then."""
        prefix = layout.checkpoint_prefix(self.root, step)
        if prefix.name in self._names():
            return None
        entries = [e for e in self._entries if e[0] != prefix.name] + [(prefix.name, None)]
        kept = entries[-self.keep_checkpoints:] if self.keep_checkpoints else entries
        try:
            with self.graph.as_default():  # outside it, Saver takes TF2's eager path
                self.saver.save(session, str(prefix), write_meta_graph=False, write_state=False)
                self.saver.export_meta_graph(f"{prefix}.meta", strip_default_attrs=True)
            durable.fsync_files(sorted(prefix.parent.glob(f"{prefix.name}.*")))
            durable.fsync_dir(prefix.parent)  # the Saver's renames of the data into place
            # the commit: from here on, a version
            self._entries, self.visible_at = commit.write_checkpoint_state(self.root, kept)
        except WRITE_ERRORS as err:
            self._entries = layout.read_checkpoint_entries(self.root)
            if prefix.name not in self._names():  # failed before its commit: nothing to keep
                commit.remove_checkpoint_files(prefix)
                raise PublishError("checkpoint", step, err) from None
        for name, _ in entries[:len(entries) - len(kept)]:
            self._retire(commit.remove_checkpoint_files, self.root / layout.CHECKPOINTS / name,
                         keep_every=True)
        return prefix

    def _names(self) -> list[str]:
        return [name for name, _ in self._entries]

    def _retire(self, remove: Callable[[Path], None], path: Path,
                keep_every: bool = False) -> None:
        """Delete a version that left the listing, unless it is a checkpoint kept every N hours.
        A failure here is only logged: the commit before it stands."""
        if keep_every and self._next_keep_time is not None:
            try:
                saved_at = Path(f"{path}.index").stat().st_mtime
            except FileNotFoundError:
                return
            if saved_at >= self._next_keep_time:
                self._next_keep_time += self._keep_every
                return
        try:
            remove(path)
        except OSError as err:
            log.warning("retention_failed", path=str(path), error=describe(err))

    # -- SavedModels -------------------------------------------------------------------------

    def export_savedmodel(self, session: tf.compat.v1.Session, step: int, *,
                          serving: Callable[[Path], ServingGraph] | None = None,
                          serve_from: Path | None = None) -> Path | None:
        """Publish a SavedModel of the session's graph (tag ``train``) at ``step``.

        ``serving`` builds a fresh inference graph (tag ``serve``) given a scratch dir for its
        assets; ``serve_from`` instead copies the ``serve`` meta graph and assets of an existing
        SavedModel, whose variable names match. Returns the path, or None if ``step`` exists.
        """
        final = layout.savedmodel_path(self.root, step)
        if final.exists():
            return None
        staging = None
        try:
            staging = commit.staging_dir(self.root, step)
            self._build_savedmodel(session, staging, serving, serve_from)
            self.visible_at = commit.commit_dir(staging, final, graphkey.record(staging))
        except BaseException as err:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            if not isinstance(err, WRITE_ERRORS):
                raise
            if not final.exists():  # else it failed after its commit (a last fsync): it stands
                raise PublishError("savedmodel", step, err) from None
        if self.keep_exports:
            for old in layout.savedmodel_versions(self.root)[:-self.keep_exports]:
                self._retire(commit.discard_dir, old.path)
        return final

    def _build_savedmodel(self, session: tf.compat.v1.Session, staging: Path,
                          serving: Callable[[Path], ServingGraph] | None,
                          serve_from: Path | None) -> None:
        with tempfile.TemporaryDirectory(prefix=layout.STAGING_PREFIX,
                                         dir=staging.parent) as scratch:
            builder = v1.saved_model.Builder(str(staging))
            with self.graph.as_default():
                builder.add_meta_graph_and_variables(
                    session, [contract.TRAIN_TAG], saver=self.saver, strip_default_attrs=True)
            if serving is not None:
                served = serving(Path(scratch))
                with served.graph.as_default():
                    builder.add_meta_graph(
                        [contract.SERVE_TAG], signature_def_map=served.signature_def_map,
                        assets_collection=served.assets_collection, main_op=served.main_op,
                        strip_default_attrs=True, saver=_variables_saver(served.graph))
            builder.save()
        if serve_from is not None:
            _copy_serve_meta_graph(Path(serve_from), staging)


def _variables_saver(graph: tf.Graph) -> v1.train.Saver:
    with graph.as_default():
        return v1.train.Saver(sharded=True, allow_empty=True)


def _copy_serve_meta_graph(source: Path, target: Path) -> None:
    """Append ``source``'s serve meta graph and its assets to the SavedModel in ``target``."""
    source_model, target_model = saved_model_pb2.SavedModel(), saved_model_pb2.SavedModel()
    source_model.ParseFromString((source / "saved_model.pb").read_bytes())
    target_model.ParseFromString((target / "saved_model.pb").read_bytes())
    for meta_graph in source_model.meta_graphs:
        if contract.SERVE_TAG in meta_graph.meta_info_def.tags:
            target_model.meta_graphs.add().CopyFrom(meta_graph)
    (target / "saved_model.pb").write_bytes(target_model.SerializeToString())
    if (source / "assets").is_dir():
        shutil.copytree(source / "assets", target / "assets", dirs_exist_ok=True)
