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
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared import bundle_index, layout
from shared.store import ObjectInfo, ObjectMissing, Store, StoreError, TooLarge, check_key

MANIFEST_NAME = "tf-handoff-manifest.json"
POINTER_NAME = "tf-handoff-pointer.json"
MANIFEST_FORMAT = 1
INDEX_KEY = "variables/variables.index"
INDEX_LIMIT = 64 << 20  # a variables.index past this is not downloaded to prove completeness
MANIFEST_LIMIT = 4 << 20  # about 40,000 files
GRAPH_FILES = ("saved_model.pb", "saved_model.pbtxt")


class ManifestError(StoreError):
    """A manifest or pointer that is not ours, not JSON, or names files in a bad form
    (absolute, ``..``): its version is not taken."""


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
                if not (isinstance(size, int) and size >= 0 and isinstance(digest, str)
                        and len(digest) == 64):
                    raise ValueError(f"bad entry for {path}")
                files[path] = FileEntry(size, digest)
            version = raw["version"]
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError("no integer version")
            return cls(version, files, float(raw.get("committed_at", 0.0)))
        except (ValueError, TypeError, KeyError, AttributeError, StoreError) as err:
            raise ManifestError(f"not a manifest of ours: {err}") from None

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
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ManifestError(f"not a pointer of ours: {err}") from None


@dataclass(frozen=True)
class RemoteVersion:
    """One complete version on the store, as ``complete_versions`` found it."""

    version: int
    files: dict[str, ObjectInfo]  # relative to the version's prefix (``variables/...``)
    manifest: Manifest | None  # None: written by another tool, proven complete from its index

    @property
    def prefix(self) -> str:
        return f"{self.version}/"

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


def group_versions(listing: list[ObjectInfo]) -> dict[int, dict[str, ObjectInfo]]:
    """The objects of a base path's listing by version: ``<n>/<rest>`` -> {rest: info}."""
    grouped: dict[int, dict[str, ObjectInfo]] = {}
    for info in listing:
        head, sep, rest = info.key.partition("/")
        if sep and rest and layout.is_version_name(head):
            grouped.setdefault(int(head), {})[rest] = info
    return grouped


def complete_versions(store: Store, memory: ScanMemory | None = None) -> list[RemoteVersion]:
    """The versions under ``store`` (a base path) a reader may take, oldest first: one LIST,
    plus a GET of each new manifest and of each other tool's new ``variables.index``. Pass the
    same ``memory`` at each poll: without it, no other tool's version is ever proven (its sizes
    must be seen unchanged twice). Why each other version was not taken is left in
    ``memory.incomplete``. Raises TransientStoreError when the store cannot be listed: what is
    complete is unknown then, which is not the same as nothing."""
    memory = memory if memory is not None else ScanMemory()
    listing = store.list()
    grouped = group_versions(listing)
    complete, memory.incomplete = [], {}
    for number in sorted(grouped):
        files = grouped[number]
        if MANIFEST_NAME in files:
            found = _with_manifest(store, memory, number, files)
        elif number in memory.ours:  # our manifest went first: being retired, not foreign
            found = "its manifest was deleted (retired)"
        else:
            found = _proven(store, memory, number, files)
        if isinstance(found, str):
            memory.incomplete[number] = found
        else:
            complete.append(found)
    memory.previous = {info.key: (info.size, info.etag) for info in listing}
    live = {info.key for info in listing}
    for cache in (memory.indexes, memory.manifests):
        for key in [k for k in cache if k[0] not in live]:
            del cache[key]
    return complete


def _with_manifest(store: Store, memory: ScanMemory, number: int,
                   files: dict[str, ObjectInfo]) -> RemoteVersion | str:
    marker = files[MANIFEST_NAME]
    cached = memory.manifests.get((marker.key, marker.etag))
    if cached is None:
        try:
            cached = Manifest.from_bytes(
                store.get(marker.key, limit=MANIFEST_LIMIT).data)
            if cached.version != number:
                cached = f"its manifest names version {cached.version}"
        except ObjectMissing:
            return "its manifest left between the listing and its read"
        except (ManifestError, TooLarge) as err:  # transient: raised, the next poll retries
            cached = str(err)
        memory.manifests[(marker.key, marker.etag)] = cached
    if isinstance(cached, str):
        return cached
    memory.ours.add(number)
    for path, entry in cached.files.items():
        info = files.get(path)
        if info is None or info.size != entry.size:
            return f"{path}: {'missing' if info is None else info.size} bytes, " \
                   f"its manifest says {entry.size}"
    return RemoteVersion(number, {p: files[p] for p in cached.files}, cached)


def _proven(store: Store, memory: ScanMemory, number: int,
            files: dict[str, ObjectInfo]) -> RemoteVersion | str:
    """Another tool's version: complete only if its index says every shard is whole and no
    size moved since the last listing."""
    if not any(name in files for name in GRAPH_FILES):
        return "no saved_model.pb or saved_model.pbtxt"
    index = files.get(INDEX_KEY)
    if index is None:
        return f"no {INDEX_KEY}"
    shards = memory.indexes.get((index.key, index.etag))
    if shards is None:
        shards = _read_index(store, index)
        memory.indexes[(index.key, index.etag)] = shards
    if isinstance(shards, str):
        return shards
    for name, least in shards.items():
        info = files.get(f"variables/{name}")
        if info is None or info.size < least:
            return f"variables/{name}: {'missing' if info is None else info.size} bytes, " \
                   f"the index needs {least}"
    moved = [rest for rest, info in files.items()
             if memory.previous.get(info.key) != (info.size, info.etag)]
    if moved:
        return f"{len(moved)} file(s) new or changed since the last listing ({moved[0]})"
    return RemoteVersion(number, dict(files), None)


def _read_index(store: Store, index: ObjectInfo) -> dict[str, int] | str:
    if index.size > INDEX_LIMIT:
        return f"{INDEX_KEY} is {index.size} bytes, more than {INDEX_LIMIT}: not read"
    try:
        return bundle_index.required_sizes(store.get(index.key, limit=INDEX_LIMIT).data)
    except ObjectMissing:
        return f"{INDEX_KEY} left between the listing and its read"
    except TooLarge:  # it grew since the listing: the next listing says how large
        return f"{INDEX_KEY} grew past {INDEX_LIMIT} bytes"
    except bundle_index.BundleIndexError as err:
        return f"{INDEX_KEY} does not parse: {err}"


# the fetch and the writer's side, in modules of their own; named here so that one import
# gives every step of the protocol
from shared.remote_fetch import fetch  # noqa: E402
from shared.remote_writer import (committed_versions, publish, retire,  # noqa: E402
                                  write_pointer)

__all__ = ["MANIFEST_NAME", "POINTER_NAME", "Manifest", "Pointer", "RemoteVersion",
           "ScanMemory", "ManifestError", "FetchError", "read_pointer", "complete_versions",
           "fetch", "publish", "retire", "committed_versions", "write_pointer"]
