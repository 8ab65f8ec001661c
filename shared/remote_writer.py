"""The writer's side of ``shared.remote``: upload a committed local SavedModel in the order that
makes it a version only when whole, retire one manifest first, and keep the pointer readers
poll up to date. Import these through ``shared.remote``."""

from __future__ import annotations

import time
from pathlib import Path

from shared.remote import (GRAPH_FILES, INDEX_KEY, MANIFEST_LIMIT, MANIFEST_NAME, POINTER_NAME,
                           Manifest, ManifestError, Pointer, group_versions)
from shared.store import ObjectMissing, Store


def upload_order(paths: list[str]) -> list[str]:
    """The variables' data shards, then their index, then the other files (assets,
    fingerprint, commit record), then the graph file: whatever a reader of another kind
    checks for last is written last. The manifest follows all of them."""
    def rank(path: str) -> tuple[int, str]:
        if path.startswith("variables/") and path != INDEX_KEY:
            return 0, path
        if path == INDEX_KEY:
            return 1, path
        return (3 if path in GRAPH_FILES else 2), path
    return sorted(paths, key=rank)


def publish(store: Store, version: int, local: Path) -> Manifest:
    """Upload the committed local SavedModel ``local`` as ``<version>/`` and commit it: the
    variables, then ``saved_model.pb``/``.pbtxt``, then every other file, then the manifest,
    then the pointer. An upload that fails part way leaves a version no reader takes (no
    manifest); calling again uploads it whole again. A version that has its manifest on the
    store already is not written over (a reader may be fetching it): its manifest is returned.
    Raises StoreError/TransientStoreError."""
    target = store.child(str(version))
    existing = _manifest_of(target)
    if existing is not None:
        return existing
    manifest = Manifest.of_dir(version, Path(local))
    for path in upload_order(list(manifest.files)):
        target.upload(Path(local) / path, path)
    target.put(MANIFEST_NAME, manifest.to_bytes())  # the commit
    write_pointer(store)
    return manifest


def _manifest_of(target: Store) -> Manifest | None:
    try:
        return Manifest.from_bytes(target.get(MANIFEST_NAME, limit=MANIFEST_LIMIT).data)
    except (ObjectMissing, ManifestError):
        return None


def retire(store: Store, version: int) -> None:
    """Delete ``<version>/``: its manifest first (no reader takes it from then on), then its
    index and graph file (so that no reader of other tools' versions can prove it complete
    either), then the rest; then rewrite the pointer."""
    target = store.child(str(version))
    keys = [info.key for info in target.list()]
    first = [MANIFEST_NAME, INDEX_KEY, *GRAPH_FILES]
    target.delete([k for k in first if k in keys] + [k for k in keys if k not in first])
    write_pointer(store)


def committed_versions(store: Store) -> list[int]:
    """The versions under ``store`` that carry our manifest, oldest first (one LIST): what
    the writer's retention counts."""
    grouped = group_versions(store.list())
    return sorted(n for n, files in grouped.items() if MANIFEST_NAME in files)


def write_pointer(store: Store) -> Pointer:
    """Rewrite the pointer from a listing of the committed versions."""
    pointer = Pointer(tuple(committed_versions(store)), time.time())
    info = store.put(POINTER_NAME, pointer.to_bytes())
    return Pointer(pointer.versions, pointer.updated_at, info.etag)
