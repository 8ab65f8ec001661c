"""The commit protocol, as a writer follows it: stage, commit, retire, clean, and claim a
directory for one model. ``shared.layout`` says what a reader then sees as committed.

- A SavedModel is written into a hidden staging directory, fsynced, then renamed to its integer
  name in one step. A reader listing integer names sees whole versions or nothing.
- A checkpoint's files (.index, .data, .meta) are written and fsynced first; the state file that
  names it is replaced atomically last. A reader that trusts only the state file never sees a
  checkpoint with a missing part.

The durable order, so that the commit point is always the last step to reach the disk:
1. ``claim`` and ``staging_dir`` fsync the directory they create an entry in.
2. SavedModel: every file and directory of the staging tree is fsynced; ``commit.json`` is
   written and fsynced, and the staging dir again; one rename gives it its number; then
   ``savedmodels/`` is fsynced, which makes the commit itself durable.
3. Checkpoint: its files are fsynced, then ``checkpoints/`` (TF's Saver renamed the data into
   place from a ``*_temp`` dir: those renames must be on disk first); then the state file is
   written to a temp file, fsynced, renamed over the old one, and ``checkpoints/`` fsynced again.
4. Retention deletes only after a commit. ``discard_dir`` hides a version by a rename and fsyncs
   that before it deletes anything, so a crash mid-delete leaves a hidden leftover, never a
   half-version under its number.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from shared import checkpoint_state, layout
from shared.durable import fsync_dir, fsync_files, fsync_tree, umask, write_atomic


def write_checkpoint_state(root: Path, entries: list[tuple[str, float | None]]
                           ) -> tuple[list[tuple[str, float]], float]:
    """Commit checkpoints: atomically replace the state file. ``entries`` are (name, commit
    time), oldest first; the newest one's time is now, and so is any missing one. Returns the
    entries as written, and the time just after the rename that made them visible. The
    recorded time is taken just before the write: the fsync of this one small file and the
    rename (0.1 ms on one machine, about 1 ms on another) separate it from the commit."""
    now = time.time()
    written = [(name, now if at is None else at) for name, at in entries[:-1]]
    written.append((entries[-1][0], now))
    visible_at = write_atomic(layout.state_file(root), checkpoint_state.render(written).encode())
    return written, visible_at


def staging_dir(root: Path, step: int) -> Path:
    """A fresh hidden directory beside the final place of SavedModel ``step``."""
    parent = layout.savedmodels_dir(root)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{layout.STAGING_PREFIX}{step}-", dir=parent))
    staging.chmod(0o777 & ~umask())  # mkdtemp's 0700 would lock out a reader of another user
    fsync_dir(parent)  # so the rename that commits it later moves an entry that is on disk
    return staging


def commit_dir(staging: Path, final: Path, record: dict | None = None) -> float:
    """Publish a staged SavedModel: flush it, record the commit time (and ``record``, what the
    writer knows of it: ``shared.graphkey``), then one rename makes it a version. The recorded
    time is taken after the tree's fsync, before the fsync of the record itself and the rename.
    Returns the time just after the rename."""
    fsync_tree(staging)
    stamp = staging / layout.COMMIT_FILE
    stamp.write_text(json.dumps({**(record or {}), "committed_at": time.time()}))
    fsync_files([stamp])
    fsync_dir(staging)
    os.rename(staging, final)  # fails rather than merge if ``final`` already holds a version
    visible_at = time.time()
    fsync_dir(final.parent)
    return visible_at


def discard_dir(path: Path) -> None:
    """Remove a version directory: first hide it with a rename, so no reader lists half of it."""
    path = Path(path)
    hidden = path.parent / f"{layout.STAGING_PREFIX}discard-{path.name}-{os.getpid()}"
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    # Durable before the delete: after a power loss mid-delete, the half-deleted version must
    # come back hidden (and be cleaned), never under its number.
    fsync_dir(path.parent)
    shutil.rmtree(hidden, ignore_errors=True)


def remove_checkpoint_files(prefix: Path) -> None:
    """Every file of checkpoint ``prefix``, with whatever TF left half-written for it: its temp
    files and the Saver's ``<prefix>_temp`` shard directory."""
    prefix = Path(prefix)
    for path in prefix.parent.glob(f"{prefix.name}[._]*"):
        match = layout.CHECKPOINT_FILE.match(path.name)
        if match and match.group(1) == prefix.name:
            path.unlink(missing_ok=True)
        elif path.name.startswith(f"{prefix.name}_temp") and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def clean_leftovers(root: Path) -> list[Path]:
    """Remove what a crash left half-written; returns what was removed.

    That is: staging directories and temp files, Saver's ``*_temp`` shard directories, TF's
    temp files, and checkpoint files newer than the newest committed checkpoint (written, never
    committed).
    """
    removed: list[Path] = []
    for parent in (layout.savedmodels_dir(root), layout.checkpoints_dir(root), Path(root)):
        if not parent.is_dir():
            continue
        for path in parent.iterdir():
            if path.name.startswith(layout.STAGING_PREFIX) or (
                    parent.name == layout.CHECKPOINTS and path.is_dir() and "_temp" in path.name):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
    newest = layout.latest_checkpoint(root)
    newest_step = newest.step if newest else -1
    if layout.checkpoints_dir(root).is_dir():
        for path in layout.checkpoints_dir(root).iterdir():
            match = layout.CHECKPOINT_FILE.match(path.name)
            if match and (match.group(3) or layout.checkpoint_step(match.group(1)) > newest_step):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def check_writable_dir(root: Path, what: str = "export dir") -> None:
    """Raise LayoutError unless ``root`` (the ``what`` an error names) is, or can become, a
    writable directory."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise layout.LayoutError(f"{what} {root} is a file, not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(prefix=layout.STAGING_PREFIX, dir=root)
        probe.close()
    except OSError as err:
        raise layout.LayoutError(f"{what} {root} is not writable: {err.strerror or err}") \
            from err


def claim(root: Path, model: str) -> None:
    """Make ``root`` an export dir of ``model``; refuse one that holds another model's versions."""
    root = Path(root)
    check_writable_dir(root)
    manifest = layout.read_manifest(root)
    if manifest is not None and manifest.get("model") != model:
        raise layout.LayoutError(f"export dir {root} holds versions of model "
                                 f"{manifest.get('model')!r}, not {model!r}")
    if manifest is None and layout.has_versions(root):
        raise layout.LayoutError(f"export dir {root} holds versions but no {layout.MANIFEST}; "
                                 "refusing to mix them with a new model's")
    subdirs = (layout.checkpoints_dir(root), layout.savedmodels_dir(root), layout.events_dir(root))
    made = [sub for sub in subdirs if not sub.is_dir()]
    for sub in made:
        sub.mkdir()
    if made:
        fsync_dir(root)  # the new entries survive a crash before anything is committed in them
    if manifest is None:
        write_atomic(root / layout.MANIFEST, json.dumps({"model": model}).encode())
