"""A base path (or export dir) on an object store, as the model server's flags, its model config
and ``python -m consumer`` take it: ``s3://bucket/prefix`` or ``gs://bucket/prefix``.

It stands where a local ``Path`` stands in a ``ModelSpec`` and a loop's ``Config``, so that the
code that compares base paths, logs them or asks whether one is absolute (the reloader, the
server's wiring) works unchanged; the ``ServedModel`` that receives one turns it into a local
cache dir that a mirror (``consumer.mirror``) fills. It never stands for a local file: it has
no ``__fspath__``, so ``open()`` or ``os.stat()`` on it fail loudly instead of reading a
directory called ``s3:``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("s3", "gs")  # those the storage layer (shared.store) reaches


@dataclass(frozen=True)
class RemoteBase:
    url: str  # without a trailing slash

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The last part of the URL, as ``Path.name`` (a model named by its export dir)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def is_absolute(self) -> bool:  # a URL is: TF Serving's "absolute path or URI"
        return True

    def absolute(self) -> "RemoteBase":
        return self

    def exists(self) -> bool:
        """Taken as there: whether the bucket answers is the mirror's to find out and log."""
        return True

    def is_dir(self) -> bool:
        return True

    def cache_key(self) -> str:
        """A short directory name for this URL's cache: two base paths of one model (a reload
        that moves it) never share one."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]


def scheme(text: str) -> str | None:
    """The URI scheme of ``text`` (``s3``, ``gs``, ``hdfs``...), or None for a local path."""
    head, sep, _ = str(text).partition("://")
    return head if sep and head.isidentifier() else None


def parse(text: str) -> RemoteBase | Path:
    """A base path as given: a ``RemoteBase`` for ``s3://`` and ``gs://``, else a local ``Path``.
    ValueError, in one line, for another scheme (``hdfs://``) or a URL with no bucket."""
    found = scheme(text)
    if found is None:
        return Path(text)
    if found not in SCHEMES:
        raise ValueError(f"{text}: {found}:// is not supported; give a local path, s3://bucket/"
                         "prefix or gs://bucket/prefix")
    url = str(text).rstrip("/")
    if not url.partition("://")[2]:
        raise ValueError(f"{text}: the URL names no bucket")
    from shared import store  # opening makes no request: a URL the store cannot take fails here

    try:
        store.open_store(url)
    except store.StoreError as err:
        raise ValueError(str(err)) from None
    return RemoteBase(url)


def cache_dir(work_dir: Path, base: RemoteBase) -> Path:
    """Where a model's mirror keeps the versions it copied from ``base``: under its work dir."""
    return Path(work_dir) / "mirror" / base.cache_key()
