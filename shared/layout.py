"""The export directory as a reader sees it: every path, version name and "is this committed?"
rule. Writers commit through ``shared.commit``, whose docstring gives the durable order.

    <export-dir>/
      export.json                  which model the directory holds (written once, atomically)
      .writer.lock                 flock of the one process that writes here (shared.dirlock)
      checkpoints/checkpoint       state file: the commit point for checkpoints, written last
      checkpoints/model.ckpt-<step>.index | .data-NNNNN-of-NNNNN | .meta
      savedmodels/<step>/          one committed SavedModel per integer name (TF Serving layout),
                                   with commit.json: the writer's clock at its commit
      savedmodels/.tmp-*           staging; never a version; removed at the next start
      events/                      TensorBoard event files

What a reader may trust:
- A SavedModel is a version once its directory has an integer name: it was renamed there whole.
  Staging directories (``.tmp-*``) are never listed.
- A checkpoint is a version once the state file names it: its files were on disk before the
  state file that names them was replaced.

Pure Python on purpose: watchers and tools can use it without importing TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from shared import checkpoint_state
from shared.durable import TEMP_PREFIX

CHECKPOINTS = "checkpoints"
SAVEDMODELS = "savedmodels"
EVENTS = "events"
MANIFEST = "export.json"
STATE_FILE = "checkpoint"
LOCK_FILE = ".writer.lock"  # held (flock) by the one process that writes here: shared.dirlock
COMMIT_FILE = "commit.json"  # in a SavedModel: the writer's clock at the commit, graph keys
CHECKPOINT_BASENAME = "model.ckpt"
STAGING_PREFIX = TEMP_PREFIX  # staging dirs and atomic-write temp files alike

# [0-9], never \d or str.isdigit(): those accept "²" or "٣", which int() then rejects or reads.
_CHECKPOINT_NAME = re.compile(r"^model\.ckpt-([0-9]+)\Z")
# group 3: the ".tmp<hex>" of a file TF was writing (``file_io.atomic_write_string_to_file``)
CHECKPOINT_FILE = re.compile(
    r"^(model\.ckpt-[0-9]+)(\.index|\.meta|\.data-[0-9]{5}-of-[0-9]{5})(\.tmp[0-9a-f]+)?\Z")
_DATA_SHARD = re.compile(r"\.data-([0-9]{5})-of-([0-9]{5})\Z")
_VERSION_DIR = re.compile(r"[0-9]+\Z")  # \Z: "$" would let a trailing newline through
MAX_VERSION = 2**63 - 1  # an int64, as TF Serving's safe_strto64 reads a version's name


class LayoutError(Exception):
    """The export directory cannot be used as asked (a file, unwritable, another model's)."""


class ListingError(OSError):
    """A directory that holds versions could not be read (EACCES, ELOOP, EMFILE, EIO, ESTALE):
    what is committed there is unknown for now, which is not the same as nothing."""


@dataclass(frozen=True)
class Version:
    """One committed version: a checkpoint prefix or a SavedModel directory."""

    kind: str  # "checkpoint" or "savedmodel"
    step: int
    path: Path
    ctime: float  # of the commit (state file or version dir): the fallback commit time
    recorded_at: float | None = None  # checkpoints: the state file's timestamp for it
    in_base: bool = False  # a SavedModel at ``<base>/<n>/`` (TF Serving's layout)

    @cached_property
    def committed_at(self) -> float:
        """When the writer committed it, by its own clock. The kernel stamps ctime from a coarse
        clock (here 3-7 ms early), so ctime is only the fallback, for writers that record none."""
        if self.recorded_at is not None:
            return self.recorded_at
        if self.kind == "savedmodel" and (self.path / COMMIT_FILE).is_file():  # never a FIFO
            try:
                return float(json.loads((self.path / COMMIT_FILE).read_text())["committed_at"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return self.ctime

    @property
    def root(self) -> Path:
        """The export dir it was published into (or the base path that holds it)."""
        return self.path.parent if self.in_base else self.path.parent.parent

    @property
    def identity(self) -> tuple:
        """What tells this version from another of the same number: a SavedModel directory
        deleted and written again has a new ctime (its commit's rename), a checkpoint a new
        commit time in the state file."""
        return (self.path, self.recorded_at if self.kind == "checkpoint" else self.ctime)

    @property
    def listing(self) -> str:
        """The kind of listing it comes from: "checkpoint", "savedmodel" or "base"."""
        return "base" if self.in_base else self.kind

    def still_committed(self) -> bool:
        """Whether the listing still holds this version. One that left it (retention) was
        superseded: a load that failed on it says nothing about whether it was broken."""
        return any(v.path == self.path for v in versions(self.root, self.listing))


# -- paths -------------------------------------------------------------------------------------


def uri_scheme(path: str) -> str | None:
    """The URI scheme of a path given as text (``gs``, ``s3``, ``hdfs``...), or None for a local
    path: readers here read local paths only."""
    head, sep, _ = str(path).partition("://")
    return head if sep and head.isidentifier() else None


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


def is_version_name(name: str) -> bool:
    """Whether ``name`` is a SavedModel version's: ASCII digits only, within an int64 (a longer
    number is skipped, as TF Serving skips what ``safe_strto64`` cannot read)."""
    return _VERSION_DIR.match(name) is not None and int(name) <= MAX_VERSION


def _scan(directory: Path) -> list[os.DirEntry]:
    """The entries of a directory that holds versions; [] if it does not exist. Any other error
    is a ``ListingError``: the caller keeps what it had and looks again later."""
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise ListingError(err.errno, f"cannot list {directory}: {err.strerror or err}") \
            from None


def checkpoint_step(name: str) -> int | None:
    """The global step in a checkpoint name such as ``model.ckpt-120``, or None."""
    match = _CHECKPOINT_NAME.match(os.path.basename(name))  # not Path: it runs per scan
    return int(match.group(1)) if match and int(match.group(1)) <= MAX_VERSION else None


# -- reading what is committed -----------------------------------------------------------------


def read_checkpoint_state(root: Path) -> list[str]:
    """Checkpoint names listed in the state file, oldest first, newest last; [] if none."""
    return [name for name, _ in read_checkpoint_entries(root)]


def read_checkpoint_entries(root: Path) -> list[tuple[str, float | None]]:
    """(name, commit time) for each checkpoint in the state file, oldest first; [] if none."""
    try:
        # bytes that are not UTF-8 are damage like any other: unreadable lines, not a crash
        return checkpoint_state.parse(state_file(root).read_text(errors="replace"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def latest_checkpoint(root: Path) -> Version | None:
    """The newest committed checkpoint, as the state file names it."""
    listed = checkpoint_versions(root)
    return listed[-1] if listed else None


def savedmodel_versions(root: Path) -> list[Version]:
    """Committed SavedModels, oldest first. Staging directories are never listed."""
    versions = []
    for entry in _scan(savedmodels_dir(root)):
        if is_version_name(entry.name) and entry.is_dir(follow_symlinks=False):
            try:
                ctime = entry.stat(follow_symlinks=False).st_ctime
            except OSError:  # removed by retention since the listing, or unreadable
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
    directory = checkpoints_dir(root)
    steps = [(checkpoint_step(name), name, recorded)
             for name, recorded in read_checkpoint_entries(root)]
    return [Version("checkpoint", step, directory / name, ctime, recorded)
            for step, name, recorded in steps if step is not None]


def base_versions(base: Path) -> list[Version]:
    """The SavedModels of a TF Serving base path: its children named by a number, oldest first.
    As in TF Serving, leading zeros are allowed (``00000123`` is version 123) and, of two names
    for one number, the one that sorts last wins. Nothing here is staged: a writer that copies a
    version in place may be caught mid-copy, and its load fail (see ``tree_stamp``)."""
    found: dict[int, Version] = {}
    for entry in sorted(_scan(base), key=lambda e: e.name):
        if is_version_name(entry.name) and entry.is_dir(follow_symlinks=False):
            try:
                ctime = entry.stat(follow_symlinks=False).st_ctime
            except OSError:
                continue
            step = int(entry.name)
            found[step] = Version("savedmodel", step, Path(entry.path), ctime, in_base=True)
    return [found[step] for step in sorted(found)]


def versions(root: Path, kind: str) -> list[Version]:
    """Committed versions of ``kind``, oldest first: "savedmodel" or "checkpoint" in an export
    dir, or "base" for the SavedModels of a TF Serving base path."""
    if kind == "base":
        return base_versions(root)
    return savedmodel_versions(root) if kind == "savedmodel" else checkpoint_versions(root)


def watched_dirs(root: Path, kind: str) -> tuple[Path, ...]:
    """The only directories whose entries can change what is committed."""
    if kind == "base":
        return (Path(root),)
    return (Path(root), checkpoints_dir(root), savedmodels_dir(root))


def is_commit_path(root: Path, path: str | os.PathLike, kind: str = "savedmodel") -> bool:
    """Whether a filesystem event at ``path`` can be a commit: the state file or a version dir."""
    path = Path(path)
    root = Path(root)
    if kind == "base":
        return path.parent == root and is_version_name(path.name)
    if path == state_file(root):
        return True
    return path.parent == savedmodels_dir(root) and is_version_name(path.name)


def tree_stamp(path: Path) -> tuple[int, int, float]:
    """(files, bytes, newest change) of everything below ``path``: a version whose stamp moved
    while it failed to load was still being written, not broken. The change time is the newest
    of each file's mtime and ctime and each directory's ctime: a copy that keeps mtimes
    (``cp -a``, ``rsync -a``) still sets every ctime to when it wrote the file."""
    files, size, newest = 0, 0, 0.0
    for dirpath, _, filenames in os.walk(path):
        try:  # a directory made (or emptied) just now is a copy in progress too
            newest = max(newest, os.stat(dirpath, follow_symlinks=False).st_ctime)
        except OSError:
            pass
        for name in filenames:
            try:
                info = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
            except OSError:
                continue
            files, size = files + 1, size + info.st_size
            newest = max(newest, info.st_mtime, info.st_ctime)
    return files, size, newest


def check_confined(version: Version) -> None:
    """Raise LayoutError if any file of ``version`` is a symlink or lies outside its export dir:
    a reader loads what the writer put there, never what a link points to."""
    # scandir's entries know their type without a stat each: this runs on every load's path
    if version.kind == "savedmodel":
        if version.path.is_symlink():
            raise LayoutError(f"{version.path} is a symlink; a version's files must be its own")
        _check_tree(version.path)
    else:
        prefix = version.path.name + "."
        with os.scandir(version.path.parent) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and CHECKPOINT_FILE.match(entry.name):
                    _check_entry(entry)
    root = os.path.realpath(version.root)
    parent = os.path.realpath(version.path.parent)
    if os.path.commonpath((root, parent)) != root:
        raise LayoutError(f"{version.path} resolves outside its export dir {root}")


def _check_tree(path: Path) -> None:
    with os.scandir(path) as entries:
        for entry in entries:
            _check_entry(entry)
            if entry.is_dir(follow_symlinks=False):
                _check_tree(Path(entry.path))


def _check_entry(entry: os.DirEntry) -> None:
    """A version's entry is a regular file or a directory of its own: a symlink could point
    anywhere, and a FIFO, socket or device would block or mislead the reader that opens it."""
    if entry.is_symlink():
        raise LayoutError(f"{entry.path} is a symlink; a version's files must be its own")
    if not (entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)):
        kind = _special_kind(entry.path)
        raise LayoutError(f"{entry.path} is {kind}, not a regular file; it is not read")


def _special_kind(path: str) -> str:
    try:
        mode = os.stat(path, follow_symlinks=False).st_mode
    except OSError:
        return "gone"
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def checkpoint_is_complete(prefix: Path) -> bool:
    """All files of a checkpoint are present: index, meta, and every data shard."""
    prefix = Path(prefix)
    if not (Path(f"{prefix}.index").is_file() and Path(f"{prefix}.meta").is_file()):
        return False
    shards = [m for p in prefix.parent.glob(f"{prefix.name}.data-*")
              if (m := _DATA_SHARD.search(p.name))]
    return bool(shards) and len(shards) == int(shards[0].group(2))


def saved_model_file(path: Path) -> Path:
    """A SavedModel's graph file: ``saved_model.pb``, or ``saved_model.pbtxt`` (its text form,
    which TF's loader reads too and TF Serving's own ``half_plus_two`` script writes) when
    there is no binary one."""
    binary = Path(path) / "saved_model.pb"
    text = binary.with_suffix(".pbtxt")
    return text if not binary.is_file() and text.is_file() else binary


def savedmodel_is_complete(path: Path) -> bool:
    path = Path(path)
    return saved_model_file(path).is_file() and (path / "variables" / "variables.index").is_file()


# -- the manifest: which model a directory holds -------------------------------------------------


def read_manifest(root: Path) -> dict | None:
    """The manifest, a JSON object naming a ``model``; None if there is none."""
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as err:  # not JSON, not UTF-8, a directory, unreadable
        raise LayoutError(f"{path} is not a readable manifest: {err}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), str):
        raise LayoutError(f"{path} is not a manifest: expected an object with a \"model\" "
                          f"name, got {json.dumps(manifest)[:80]}")
    return manifest


def has_versions(root: Path) -> bool:
    return latest_checkpoint(root) is not None or latest_savedmodel(root) is not None
