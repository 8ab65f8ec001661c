"""The export directory: every path, version name and "is this committed?" rule lives here.

    <export-dir>/
      export.json                  which model the directory holds (written once, atomically)
      checkpoints/checkpoint       state file: the commit point for checkpoints, written last
      checkpoints/model.ckpt-<step>.index | .data-NNNNN-of-NNNNN | .meta
      savedmodels/<step>/          one committed SavedModel per integer name (TF Serving layout),
                                   with commit.json: the writer's clock at its commit
      savedmodels/.tmp-*           staging; never a version; removed at the next start
      events/                      TensorBoard event files

Commit rules, the core of the handoff:
- A SavedModel is written into a hidden staging directory, fsynced, then renamed to its integer
  name in one step. A reader listing integer names sees whole versions or nothing.
- A checkpoint's files (.index, .data, .meta) are written and fsynced first; the state file that
  names it is replaced atomically last. A reader that trusts only the state file never sees a
  checkpoint with a missing part.

Pure Python on purpose: watchers and tools can use it without importing TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from shared.durable import TEMP_PREFIX, fsync_dir, fsync_files, fsync_tree, umask, write_atomic

CHECKPOINTS = "checkpoints"
SAVEDMODELS = "savedmodels"
EVENTS = "events"
MANIFEST = "export.json"
STATE_FILE = "checkpoint"
COMMIT_FILE = "commit.json"  # in a SavedModel: {"committed_at": <the writer's time.time()>}
CHECKPOINT_BASENAME = "model.ckpt"
STAGING_PREFIX = TEMP_PREFIX  # staging dirs and atomic-write temp files alike

_CHECKPOINT_NAME = re.compile(r"^model\.ckpt-(\d+)$")
_CHECKPOINT_FILE = re.compile(r"^(model\.ckpt-\d+)(\.index|\.meta|\.data-\d{5}-of-\d{5})$")
_STATE_LINE = re.compile(r'^(model_checkpoint_path|all_model_checkpoint_paths):\s*"([^"]*)"\s*$')
_STATE_TIME = re.compile(r'^all_model_checkpoint_timestamps:\s*([0-9.eE+-]+)\s*$')
_DATA_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")


class LayoutError(Exception):
    """The export directory cannot be used as asked (a file, unwritable, another model's)."""


@dataclass(frozen=True)
class Version:
    """One committed version: a checkpoint prefix or a SavedModel directory."""

    kind: str  # "checkpoint" or "savedmodel"
    step: int
    path: Path
    ctime: float  # of the commit (state file or version dir): the fallback commit time
    recorded_at: float | None = None  # checkpoints: the state file's timestamp for it

    @cached_property
    def committed_at(self) -> float:
        """When the writer committed it, by its own clock. The kernel stamps ctime from a coarse
        clock (here 3-7 ms early), so ctime is only the fallback, for writers that record none."""
        if self.recorded_at is not None:
            return self.recorded_at
        if self.kind == "savedmodel":
            try:
                return float(json.loads((self.path / COMMIT_FILE).read_text())["committed_at"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return self.ctime

    def exists(self) -> bool:
        if self.kind == "savedmodel":
            return self.path.is_dir()
        return Path(f"{self.path}.index").exists()


# -- paths -------------------------------------------------------------------------------------


def checkpoints_dir(root: Path) -> Path:
    return Path(root) / CHECKPOINTS


def savedmodels_dir(root: Path) -> Path:
    return Path(root) / SAVEDMODELS


def events_dir(root: Path) -> Path:
    return Path(root) / EVENTS


def state_file(root: Path) -> Path:
    return checkpoints_dir(root) / STATE_FILE


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_BASENAME}-{step}"


def checkpoint_prefix(root: Path, step: int) -> Path:
    return checkpoints_dir(root) / checkpoint_name(step)


def savedmodel_path(root: Path, step: int) -> Path:
    return savedmodels_dir(root) / str(step)


def checkpoint_step(name: str) -> int | None:
    """The global step in a checkpoint name such as ``model.ckpt-120``, or None."""
    match = _CHECKPOINT_NAME.match(Path(name).name)
    return int(match.group(1)) if match else None


# -- reading what is committed -----------------------------------------------------------------


def read_checkpoint_state(root: Path) -> list[str]:
    """Checkpoint names listed in the state file, oldest first, newest last; [] if none."""
    return [name for name, _ in read_checkpoint_entries(root)]


def read_checkpoint_entries(root: Path) -> list[tuple[str, float | None]]:
    """(name, commit time) for each checkpoint in the state file, oldest first. The time is the
    writer's ``all_model_checkpoint_timestamps`` entry, or None where it wrote none."""
    try:
        text = state_file(root).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return []
    latest, names, times = None, [], []
    for line in text.splitlines():
        if match := _STATE_TIME.match(line.strip()):
            times.append(float(match.group(1)))
            continue
        match = _STATE_LINE.match(line.strip())
        if not match:
            continue
        name = Path(match.group(2)).name  # TF may write absolute paths; the layout is relative
        if match.group(1) == "model_checkpoint_path":
            latest = name
        else:
            names.append(name)
    if len(times) != len(names):  # TF writes them paired; anything else is not ours to trust
        times = [None] * len(names)
    entries = list(zip(names, times))
    if latest is not None and latest not in names:
        entries.append((latest, None))
    return entries


def latest_checkpoint(root: Path) -> Version | None:
    """The newest committed checkpoint, as the state file names it."""
    listed = checkpoint_versions(root)
    return listed[-1] if listed else None


def savedmodel_versions(root: Path) -> list[Version]:
    """Committed SavedModels, oldest first. Staging directories are never listed."""
    versions = []
    try:
        entries = list(os.scandir(savedmodels_dir(root)))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
            try:
                ctime = entry.stat(follow_symlinks=False).st_ctime
            except FileNotFoundError:  # removed by retention since the listing
                continue
            versions.append(Version("savedmodel", int(entry.name), Path(entry.path), ctime))
    return sorted(versions, key=lambda v: v.step)


def latest_savedmodel(root: Path) -> Version | None:
    versions = savedmodel_versions(root)
    return versions[-1] if versions else None


def checkpoint_versions(root: Path) -> list[Version]:
    """Every checkpoint the state file lists, oldest first."""
    try:
        # stat before reading: a state file replaced in between is read with the older time
        ctime = state_file(root).stat().st_ctime
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Version("checkpoint", checkpoint_step(name), checkpoints_dir(root) / name, ctime,
                    recorded)
            for name, recorded in read_checkpoint_entries(root) if checkpoint_step(name) is not None]


def versions(root: Path, kind: str) -> list[Version]:
    """Committed versions of ``kind`` ("savedmodel" or "checkpoint"), oldest first."""
    return savedmodel_versions(root) if kind == "savedmodel" else checkpoint_versions(root)


def is_commit_path(root: Path, path: str | os.PathLike) -> bool:
    """Whether a filesystem event at ``path`` can be a commit: the state file or a version dir."""
    path = Path(path)
    root = Path(root)
    if path == state_file(root):
        return True
    return path.parent == savedmodels_dir(root) and path.name.isdigit()


def checkpoint_is_complete(prefix: Path) -> bool:
    """All files of a checkpoint are present: index, meta, and every data shard."""
    prefix = Path(prefix)
    if not (Path(f"{prefix}.index").is_file() and Path(f"{prefix}.meta").is_file()):
        return False
    shards = [m for p in prefix.parent.glob(f"{prefix.name}.data-*")
              if (m := _DATA_SHARD.search(p.name))]
    return bool(shards) and len(shards) == int(shards[0].group(2))


def savedmodel_is_complete(path: Path) -> bool:
    path = Path(path)
    return (path / "saved_model.pb").is_file() and (path / "variables" / "variables.index").is_file()


# -- writing -----------------------------------------------------------------------------------


def write_checkpoint_state(root: Path, entries: list[tuple[str, float | None]]
                           ) -> list[tuple[str, float]]:
    """Commit checkpoints: atomically replace the state file. ``entries`` are (name, commit
    time), oldest first; the newest one's time is now, and any missing time is now too.

    The text is the CheckpointState format TensorFlow itself writes, with relative paths, so
    ``tf.train.latest_checkpoint`` and ``checkpoints_iterator`` read it too. The time is taken
    just before the write: the fsync of this one small file and the rename (about 0.1 ms here)
    are all that separate it from the commit.
    """
    now = time.time()
    written = [(name, now if at is None else at) for name, at in entries[:-1]]
    written.append((entries[-1][0], now))
    lines = [f'model_checkpoint_path: "{written[-1][0]}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name, _ in written]
    lines += [f"all_model_checkpoint_timestamps: {at!r}" for _, at in written]
    write_atomic(state_file(root), ("\n".join(lines) + "\n").encode())
    return written


def staging_dir(root: Path, step: int) -> Path:
    """A fresh hidden directory beside the final place of SavedModel ``step``."""
    parent = savedmodels_dir(root)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{step}-", dir=parent))
    staging.chmod(0o777 & ~umask())  # mkdtemp's 0700 would lock out a reader of another user
    return staging


def commit_dir(staging: Path, final: Path) -> None:
    """Publish a staged SavedModel: flush it, record the commit time, then one rename makes it a
    version. The time is taken after the tree's fsync, just before the rename."""
    fsync_tree(staging)
    stamp = staging / COMMIT_FILE
    stamp.write_text(json.dumps({"committed_at": time.time()}))
    fsync_files([stamp])
    fsync_dir(staging)
    os.rename(staging, final)  # fails rather than merge if ``final`` already holds a version
    fsync_dir(final.parent)


def discard_dir(path: Path) -> None:
    """Remove a version directory: first hide it with a rename, so no reader lists half of it."""
    path = Path(path)
    hidden = path.parent / f"{STAGING_PREFIX}discard-{path.name}-{os.getpid()}"
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    shutil.rmtree(hidden, ignore_errors=True)


def remove_checkpoint_files(prefix: Path) -> None:
    for path in Path(prefix).parent.glob(f"{Path(prefix).name}.*"):
        if _CHECKPOINT_FILE.match(path.name):
            path.unlink(missing_ok=True)


def clean_leftovers(root: Path) -> list[Path]:
    """Remove what a crash left half-written; returns what was removed.

    That is: staging directories and temp files, Saver's ``*_temp`` shard directories, and
    checkpoint files newer than the newest committed checkpoint (written, never committed).
    """
    removed: list[Path] = []
    for parent in (savedmodels_dir(root), checkpoints_dir(root), Path(root)):
        if not parent.is_dir():
            continue
        for path in parent.iterdir():
            if path.name.startswith(STAGING_PREFIX) or (
                    parent.name == CHECKPOINTS and path.is_dir() and "_temp" in path.name):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
    newest = latest_checkpoint(root)
    newest_step = newest.step if newest else -1
    if checkpoints_dir(root).is_dir():
        for path in checkpoints_dir(root).iterdir():
            match = _CHECKPOINT_FILE.match(path.name)
            if match and checkpoint_step(match.group(1)) > newest_step:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# -- the manifest: which model a directory holds -------------------------------------------------


def read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((Path(root) / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, NotADirectoryError) as err:
        raise LayoutError(f"{Path(root) / MANIFEST} is not a readable manifest: {err}") from err


def has_versions(root: Path) -> bool:
    return latest_checkpoint(root) is not None or latest_savedmodel(root) is not None


def check_writable_dir(root: Path) -> None:
    """Raise LayoutError unless ``root`` is, or can become, a writable directory."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise LayoutError(f"export dir {root} is a file, not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(prefix=STAGING_PREFIX, dir=root)
        probe.close()
    except OSError as err:
        raise LayoutError(f"export dir {root} is not writable: {err.strerror or err}") from err


def claim(root: Path, model: str) -> None:
    """Make ``root`` an export dir of ``model``; refuse one that holds another model's versions."""
    root = Path(root)
    check_writable_dir(root)
    manifest = read_manifest(root)
    if manifest is not None and manifest.get("model") != model:
        raise LayoutError(f"export dir {root} holds versions of model "
                          f"{manifest.get('model')!r}, not {model!r}")
    if manifest is None and has_versions(root):
        raise LayoutError(f"export dir {root} holds versions but no {MANIFEST}; "
                          "refusing to mix them with a new model's")
    for sub in (checkpoints_dir(root), savedmodels_dir(root), events_dir(root)):
        sub.mkdir(exist_ok=True)
    if manifest is None:
        write_atomic(root / MANIFEST, json.dumps({"model": model}).encode())
