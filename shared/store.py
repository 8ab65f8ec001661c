"""One storage layer for local paths and object stores: ``s3://bucket/prefix`` (AWS S3 and any
S3-compatible store such as MinIO), ``gs://bucket/prefix``, or a local directory.

A ``Store`` is rooted at a prefix; every key is relative to it and uses ``/``. It offers what
the commit protocol (``shared.remote``) needs and nothing more: a recursive listing with sizes
and ETags, a bounded conditional GET of a small object (the pointer a reader polls: one request,
"unchanged" when its ETag still matches), a download of one file with parallel ranged reads,
an upload, and deletes.

Errors are of two kinds, because a caller treats them differently:
- ``TransientStoreError``: the store could not answer now (connection refused or reset, a
  timeout, a 5xx, S3's ``SlowDown``, GCS's 429). Retry later with back-off; nothing is known.
- ``StoreError``: the request itself is wrong (no such bucket, access denied, a bad URL).
  Retrying the same request will not help. ``ObjectMissing`` is its "no such key".

Credentials are found as the cloud SDKs find them (environment, config files, instance and
workload identity). An S3-compatible store is reached through the standard
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` environment variables (in that order), as the
AWS CLI and SDKs read them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from shared.durable import TEMP_PREFIX, write_atomic

SCHEMES = ("s3", "gs")
SMALL_OBJECT_LIMIT = 1 << 20  # ``get``'s default bound: a pointer or manifest, never a shard
DEFAULT_PART_SIZE = 16 << 20  # ranged reads of a download, each in its own request
DEFAULT_PARALLEL = 8  # ranged reads in flight for one download
LIST_LIMIT = 200_000  # objects one listing may hold: a base path past this is refused, not read


class StoreError(Exception):
    """A request the store refused for good (no bucket, access denied, a bad URL): one line of
    text naming the URL and the reason."""


class TransientStoreError(StoreError):
    """The store could not answer now: connection refused or reset, timeout, 5xx, SlowDown,
    429. Nothing can be concluded about the object; retry with back-off."""


class ObjectMissing(StoreError):
    """No object under that key (404)."""


class TooLarge(StoreError):
    """An object is larger than the bound its reader set: refused before its body is read. Also
    a listing with more objects than its bound (``LIST_LIMIT``)."""


class ObjectChanged(TransientStoreError):
    """The object was replaced or resized while it was read (If-Match failed, or fewer or more
    bytes came than listed): list again; the bytes read are not to be used."""


class Listing(list):
    """What ``Store.list`` returns: the objects, and ``unreadable``, the first-level prefixes
    (``10/``) left out whole because a key under them cannot be read as a path (``..``, an empty
    part) by the client library. A version under such a prefix is never taken half-listed."""

    unreadable: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing. ``key`` is relative to the store's root; ``etag`` is the
    store's (quotes stripped), or for a local file a stamp of its size and change time."""

    key: str
    size: int
    etag: str | None
    modified: float | None = None  # seconds since the epoch, when the store says


@dataclass(frozen=True)
class Got:
    """What a conditional ``get`` returned: ``data`` None means unchanged (304), so ``etag`` is
    the one that was given."""

    data: bytes | None
    etag: str | None

    @property
    def unchanged(self) -> bool:
        return self.data is None


class Store:
    """A bucket prefix or a local directory. Thread-safe: one instance serves every thread."""

    url: str  # as opened, without a trailing slash

    def child(self, prefix: str) -> "Store":
        """The same store rooted at ``prefix`` below this one (``savedmodels``, ``123``)."""
        raise NotImplementedError

    def list(self, prefix: str = "", *, limit: int = LIST_LIMIT) -> list[ObjectInfo]:
        """Every object below ``prefix`` (recursively), sorted by key. Missing prefix: [].
        More than ``limit`` objects raises TooLarge, once the limit is passed (memory bound).
        The result is a ``Listing``: a first-level prefix holding a key the library cannot
        parse is left out whole and named in its ``unreadable``."""
        raise NotImplementedError

    def get(self, key: str, *, if_none_match: str | None = None,
            limit: int = SMALL_OBJECT_LIMIT) -> Got:
        """Read a small object whole, in one request. With ``if_none_match``, an object whose
        ETag still matches comes back as ``Got(None, etag)`` without its body. Raises
        ObjectMissing, TooLarge (checked on the size the store announces, before the body is
        read), TransientStoreError."""
        raise NotImplementedError

    def download(self, key: str, dest: Path, *, size: int | None = None,
                 etag: str | None = None, parallel: int = DEFAULT_PARALLEL,
                 part_size: int = DEFAULT_PART_SIZE) -> int:
        """Write object ``key`` to the local file ``dest`` (created or truncated) with up to
        ``parallel`` ranged reads in flight, each at least ``part_size`` bytes (an object is
        cut into at most ``parallel`` parts: one request per connection). ``size`` and
        ``etag`` (from a listing) save a HEAD; with ``etag``, each read carries If-Match, so an
        object replaced mid-download raises TransientStoreError instead of mixing two
        objects' bytes. Returns the bytes written. ``dest`` is not fsynced: the caller commits
        it."""
        raise NotImplementedError

    def upload(self, path: Path, key: str) -> ObjectInfo:
        """Write the local file ``path`` to ``key`` (multipart above the part size). An object
        is visible whole or not at all, as every store here guarantees for a PUT."""
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Write a small object from memory (a manifest, the pointer)."""
        raise NotImplementedError

    def delete(self, keys: Iterable[str]) -> None:
        """Delete ``keys`` in the order given (a missing key is not an error)."""
        raise NotImplementedError


def is_remote(url: str | os.PathLike) -> bool:
    """Whether ``url`` names an object store (``s3://``, ``gs://``), not a local path."""
    scheme, sep, _ = str(url).partition("://")
    return bool(sep) and scheme in SCHEMES


def open_store(url: str | os.PathLike) -> Store:
    """The store for ``url``: ``s3://bucket[/prefix]``, ``gs://bucket[/prefix]`` or a local
    directory. Opening makes no request; a bad URL or an unsupported scheme (``hdfs://``)
    raises StoreError."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return LocalStore(Path(text))
    if scheme == "file":
        return LocalStore(Path(rest))
    if scheme not in SCHEMES:
        raise StoreError(f"{text}: scheme {scheme!r} is not supported (s3://, gs:// or a "
                         "local path)")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StoreError(f"{text}: no bucket named")
    from shared import store_cloud  # obstore loads only where a bucket is used

    return store_cloud.open_bucket(scheme, bucket, prefix.strip("/"))


def endpoint_for_s3() -> str | None:
    """The S3 endpoint override from the environment: AWS_ENDPOINT_URL_S3, else
    AWS_ENDPOINT_URL, else None (AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def join(*parts: str) -> str:
    """Keys joined with one ``/`` each, empty parts skipped."""
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


def check_key(key: str) -> str:
    """``key`` if it stays below its root (no ``..``, no absolute path, no empty part);
    StoreError otherwise: a manifest or a caller must never name a file outside."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"bad key {key!r}: keys are relative, without '.', '..' or '//'")
    return key


class LocalStore(Store):
    """A local directory as a store: what tests, a shared disk, and ``fetch``'s own code path
    for local base paths use. A ``put`` or ``upload`` lands by one rename (never half a file);
    temp files (``.tmp-*``) are never listed; a delete removes directories it leaves empty, so
    a retired version is gone from a local listing too."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root).rstrip("/") or "/"

    def child(self, prefix: str) -> "LocalStore":
        return LocalStore(self.root / check_key(prefix.strip("/")))

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def list(self, prefix: str = "", *, limit: int = LIST_LIMIT) -> list[ObjectInfo]:
        top = self.root / check_key(prefix.strip("/")) if prefix.strip("/") else self.root
        found = Listing()
        for dirpath, dirnames, filenames in os.walk(top, onerror=_raise):
            dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                path = Path(dirpath) / name
                try:
                    info = path.stat()
                except FileNotFoundError:
                    continue
                found.append(ObjectInfo(path.relative_to(self.root).as_posix(), info.st_size,
                                        _local_etag(info), info.st_mtime))
                if len(found) > limit:
                    raise TooLarge(f"{top}: more than {limit} files")
        found.sort(key=lambda o: o.key)
        return found

    def get(self, key: str, *, if_none_match: str | None = None,
            limit: int = SMALL_OBJECT_LIMIT) -> Got:
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                etag = _local_etag(info)
                if if_none_match is not None and if_none_match == etag:
                    return Got(None, etag)
                if info.st_size > limit:
                    raise TooLarge(f"{path}: {info.st_size} bytes, more than {limit}")
                return Got(handle.read(limit + 1)[:limit], etag)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectMissing(f"{path}: no such file") from None
        except OSError as err:
            raise StoreError(f"{path}: {err.strerror or err}") from None

    def download(self, key: str, dest: Path, *, size: int | None = None,
                 etag: str | None = None, parallel: int = DEFAULT_PARALLEL,
                 part_size: int = DEFAULT_PART_SIZE) -> int:
        path = self._path(key)
        try:
            shutil.copyfile(path, dest)
        except FileNotFoundError:
            raise ObjectMissing(f"{path}: no such file") from None
        written = Path(dest).stat().st_size
        if size is not None and written != size:
            raise ObjectChanged(f"{path}: {written} bytes, listed as {size}: it changed")
        return written

    def upload(self, path: Path, key: str) -> ObjectInfo:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}-", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self._info(key)

    def put(self, key: str, data: bytes) -> ObjectInfo:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
        return self._info(key)

    def delete(self, keys: Iterable[str]) -> None:
        parents = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parents.add(path.parent)
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            while parent != self.root and self.root in parent.parents:
                try:
                    parent.rmdir()  # only if empty: another file keeps it
                except OSError:
                    break
                parent = parent.parent

    def _info(self, key: str) -> ObjectInfo:
        info = self._path(key).stat()
        return ObjectInfo(key, info.st_size, _local_etag(info), info.st_mtime)


def _local_etag(info: os.stat_result) -> str:
    """A file's stand-in for an ETag: a rename over it or a rewrite changes it."""
    return f"{info.st_ino:x}-{info.st_mtime_ns:x}-{info.st_size:x}"


def _raise(err: OSError) -> None:
    if not isinstance(err, (FileNotFoundError, NotADirectoryError)):
        raise StoreError(f"cannot list {err.filename}: {err.strerror or err}") from None
