"""``shared.remote.fetch``: copy one complete version from a store into a local directory with
``shared.commit``'s local protocol (a hidden staging dir, checked, fsynced, one rename), so
that the unchanged local source and loader read it. Import it through ``shared.remote``."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.durable import TEMP_PREFIX, fsync_dir, fsync_tree, umask
from shared.remote import MANIFEST_NAME, FetchError, RemoteVersion, sha256_of
from shared.store import (DEFAULT_PARALLEL, DEFAULT_PART_SIZE, ObjectChanged, ObjectMissing,
                          Store, StoreError, check_key)

FREE_MARGIN = 64 << 20  # left free on the cache's disk beyond a version's bytes


def fetch(store: Store, version: RemoteVersion, dest: Path, *,
          parallel: int = DEFAULT_PARALLEL) -> Path:
    """Copy ``version`` into the local directory ``dest`` (which must not exist): download each
    file into a hidden staging dir beside it (parallel ranged reads), check each size against
    the listing and, with a manifest, each sha256; fsync; then one rename makes ``dest``.
    Anything else left behind on failure is removed. Raises FetchError (a mismatch; a file that
    went or changed during the download, as when the writer retires the version meanwhile; a
    path that is not a plain relative one, checked before anything is created),
    TransientStoreError, OSError (ENOSPC: checked against ``version.size`` before the first
    byte is written, and again as the disk fills)."""
    dest = Path(dest)
    for path in version.files:
        try:
            check_key(path)
        except StoreError as err:
            raise FetchError(f"{store.url}/{version.prefix}: {err}") from None
    if dest.exists():
        raise FileExistsError(errno.EEXIST, "a fetch never writes over a version", str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if free < version.size + FREE_MARGIN:
        raise OSError(errno.ENOSPC, f"{version.size} bytes to fetch, {free} free", str(dest))
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}fetch-{version.version}-",
                                    dir=dest.parent))
    try:
        _download_all(store.child(version.prefix), version, staging, parallel)
        if version.manifest is not None:
            (staging / MANIFEST_NAME).write_bytes(version.manifest.to_bytes())
        os.chmod(staging, 0o777 & ~umask())
        fsync_tree(staging)
        os.rename(staging, dest)
    except (ObjectMissing, ObjectChanged) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise FetchError(f"{err} (it went or changed during the download)") from None
    except (IsADirectoryError, NotADirectoryError, FileExistsError) as err:
        shutil.rmtree(staging, ignore_errors=True)  # "a" and "a/b" both named as files
        raise FetchError(f"{store.url}/{version.prefix}: {err}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(dest.parent)
    return dest


def _download_all(store: Store, version: RemoteVersion, staging: Path, parallel: int) -> None:
    """Small files together, one per thread; each large one alone, in ranged parts."""
    small = [p for p, i in version.files.items() if i.size < DEFAULT_PART_SIZE]
    large = [p for p, i in version.files.items() if i.size >= DEFAULT_PART_SIZE]
    for path in version.files:
        (staging / path).parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, min(parallel, len(small)))) as pool:
        futures = [pool.submit(_download_one, store, version, p, staging, 1) for p in small]
        try:
            for future in futures:
                future.result()
        except BaseException:  # the version is lost: do not download the rest of it
            for future in futures:
                future.cancel()
            raise
    for path in large:
        _download_one(store, version, path, staging, parallel)


def _download_one(store: Store, version: RemoteVersion, path: str, staging: Path,
                  parallel: int) -> None:
    info = version.files[path]
    target = staging / check_key(path)
    written = store.download(path, target, size=info.size, etag=info.etag, parallel=parallel)
    if written != info.size or target.stat().st_size != info.size:
        raise FetchError(f"{store.url}/{path}: {target.stat().st_size} bytes written, "
                         f"{info.size} listed")
    if version.manifest is not None:
        expected = version.manifest.files[path].sha256
        actual = sha256_of(target)
        if actual != expected:
            raise FetchError(f"{store.url}/{path}: sha256 {actual[:12]}..., its manifest "
                             f"says {expected[:12]}...")
