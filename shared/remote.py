"""Versions on an object store: the bucket layout, the writer's commit protocol, and what a
reader may take as complete. ``shared.store`` does the I/O; this module decides the order.

An object store has no rename: a version cannot appear whole in one step, so a reader must be
told when it is whole. The layout of a base path (TF Serving's ``<base>/<n>/``; the producer's
``--export-dir s3://b/p`` keeps its SavedModels at ``s3://b/p/savedmodels``, beside its
``export.json``)::

    <base>/<n>/...                        the SavedModel's files, as TF Serving expects them
    <base>/<n>/tf-handoff-manifest.json   the commit marker, written LAST: every file of the
                                          version with its size and sha256
    <base>/tf-handoff-pointer.json        rewritten after each commit and retire: the committed
                                          versions. A reader polls it with one conditional GET
                                          (If-None-Match) instead of a LIST per poll

The writer (``publish``): upload the variables, then ``saved_model.pb`` (or ``.pbtxt``), then
the other files, then the manifest, then the pointer. ``retire`` deletes the manifest first
(from then on the version is not ours to read), then its files, then rewrites the pointer.

A reader (``complete_versions``) takes a version that has our manifest with every file listed
at its size, and a version written by another tool (``aws s3 sync``, ``gsutil cp -r``, TFX's
Pusher) only when it is provably complete: ``saved_model.pb`` or ``.pbtxt`` present,
``variables/variables.index`` present, every data shard the index names present and at least as
large as the index's entries say (the index is a TF table of BundleEntryProto, read here from
its bytes), and its sizes unchanged over two listings. ``fetch`` then copies one version into a
local directory: into a hidden temp dir beside it, each file checked (size and, with a
manifest, sha256), then one rename into place (``shared.commit``'s local protocol), after which
the unchanged local loader reads it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.store import ObjectInfo, ObjectMissing, Store, StoreError, check_key

MANIFEST_NAME = "tf-handoff-manifest.json"
POINTER_NAME = "tf-handoff-pointer.json"
MANIFEST_FORMAT = 1
INDEX_KEY = "variables/variables.index"
INDEX_LIMIT = 16 << 20  # a variables.index past this is not downloaded to prove completeness
# (~100,000 tensors; parsed in pure Python, once per ETag)
MANIFEST_LIMIT = 4 << 20  # about 40,000 files
GRAPH_FILES = ("saved_model.pb", "saved_model.pbtxt")


class ManifestError(StoreError):
    """A manifest or pointer that is not ours, not JSON, or names files in a bad form
    (absolute, ``..``): its version is not taken."""


class BadPointer(ManifestError, ObjectMissing):
    """A pointer object that is not ours (not JSON, another format): a reader treats it as no
    pointer (an ObjectMissing: it lists instead), never as a store that refuses it."""


class FetchError(StoreError):
    """A version's download did not match what was listed (size, sha256) or its manifest: the
    copy is discarded, and this identity of the version should not be tried again at once."""


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The commit marker of one version: every file (relative path -> size, sha256)."""

    version: int
    files: dict[str, FileEntry]
    committed_at: float  # the writer's clock when it wrote the manifest

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": MANIFEST_FORMAT, "version": self.version,
            "committed_at": self.committed_at,
            "files": {path: {"size": e.size, "sha256": e.sha256}
                      for path, e in sorted(self.files.items())}}, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        """Parse a manifest; ManifestError if it is not one of ours or names a bad path."""
        try:
            raw = json.loads(data)
            if raw.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, not {MANIFEST_FORMAT}")
            files = {}
            for path, entry in raw["files"].items():
                check_key(path)
                size, digest = entry["size"], entry["sha256"]
                if not (type(size) is int and size >= 0 and isinstance(digest, str)
                        and len(digest) == 64):
                    raise ValueError(f"bad entry for {path}")
                files[path] = FileEntry(size, digest)
            version = raw["version"]
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError("no integer version")
            return cls(version, files, float(raw.get("committed_at", 0.0)))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError,
                StoreError) as err:  # RecursionError: JSON nested deeper than Python recurses
            raise ManifestError(f"not a manifest of ours: {type(err).__name__}: "
                                f"{str(err)[:200]}") from None

    @classmethod
    def of_dir(cls, version: int, path: Path) -> "Manifest":
        """The manifest of a local version directory: sizes and sha256 of each file."""
        path = Path(path)
        files = {}
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = file.relative_to(path).as_posix()
            if rel != MANIFEST_NAME:
                files[rel] = FileEntry(file.stat().st_size, sha256_of(file))
        return cls(version, files, time.time())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Pointer:
    """What the writer committed last: the versions it holds, newest last."""

    versions: tuple[int, ...]
    updated_at: float
    etag: str | None = None  # of the object it was read from, for the next conditional GET

    def to_bytes(self) -> bytes:
        return json.dumps({"format": MANIFEST_FORMAT, "versions": list(self.versions),
                           "updated_at": self.updated_at}).encode()

    @classmethod
    def from_bytes(cls, data: bytes, etag: str | None) -> "Pointer":
        try:
            raw = json.loads(data)
            versions = tuple(int(v) for v in raw["versions"])
            return cls(versions, float(raw["updated_at"]), etag)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
            raise BadPointer(f"not a pointer of ours: {type(err).__name__}: "
                             f"{str(err)[:200]}") from None


@dataclass(frozen=True)
class RemoteVersion:
    """One complete version on the store, as ``complete_versions`` found it."""

    version: int
    files: dict[str, ObjectInfo]  # relative to the version's prefix (``variables/...``)
    manifest: Manifest | None  # None: written by another tool, proven complete from its index
    name: str = ""  # its prefix's name on the store when not ``str(version)`` ("0010")

    @property
    def prefix(self) -> str:
        return f"{self.name or self.version}/"

    @property
    def size(self) -> int:
        """Bytes to download: what a cache must have free before ``fetch``."""
        return sum(info.size for info in self.files.values())

    @property
    def identity(self) -> tuple:
        """Tells this version from another of the same number written again: the ETags of its
        files (its manifest's included)."""
        return tuple(sorted((key, info.etag, info.size) for key, info in self.files.items()))


@dataclass
class ScanMemory:
    """What ``complete_versions`` keeps between polls: the previous listing's sizes (the
    two-listings rule for other tools' versions) and each variables.index already parsed, by
    its ETag (so an index is downloaded once, not every poll). One per base path, per reader."""

    previous: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    indexes: dict[tuple[str, str | None], dict[str, int] | str] = field(default_factory=dict)
    incomplete: dict[int, str] = field(default_factory=dict)  # version -> why, last scan
    manifests: dict[tuple[str, str | None], Manifest | str] = field(default_factory=dict)
    ours: set[int] = field(default_factory=set)  # versions once seen with our manifest


# -- readers -----------------------------------------------------------------------------------


def read_pointer(store: Store, etag: str | None = None) -> Pointer | None:
    """One conditional GET of the pointer. Returns None when it is unchanged since ``etag``
    (nothing was committed or retired by our writer), else the pointer read, whose ``etag`` the
    caller passes next time. A base path with no pointer (no writer of ours) raises
    ObjectMissing: list instead. TransientStoreError as the store's."""
    got = store.get(POINTER_NAME, if_none_match=etag)
    return None if got.unchanged else Pointer.from_bytes(got.data, got.etag)


# the scan, the fetch and the writer's side live in modules of their own, which import this
# one; they are named here (loaded at first use, PEP 562) so that one import gives every step of
# the protocol, and so that importing any of them first works too (no import cycle)
_ELSEWHERE = {"complete_versions": "shared.remote_scan", "group_versions": "shared.remote_scan",
              "scan_versions": "shared.remote_scan", "fetch": "shared.remote_fetch",
              "publish": "shared.remote_writer", "retire": "shared.remote_writer",
              "committed_versions": "shared.remote_writer",
              "write_pointer": "shared.remote_writer"}


def __getattr__(name: str):
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["MANIFEST_NAME", "POINTER_NAME", "Manifest", "Pointer", "RemoteVersion",
           "ScanMemory", "ManifestError", "FetchError", "read_pointer", "complete_versions",
           "fetch", "publish", "retire", "committed_versions", "write_pointer"]
