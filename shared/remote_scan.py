"""``shared.remote.complete_versions``: which versions under a base path a reader may take, from
one listing (our manifest, or another tool's version proven complete from its
``variables.index``). Import it through ``shared.remote``."""

from __future__ import annotations

from dataclasses import replace

from shared import bundle_index, layout
from shared.remote import (GRAPH_FILES, INDEX_KEY, INDEX_LIMIT, MANIFEST_LIMIT, MANIFEST_NAME,
                           Manifest, ManifestError, RemoteVersion, ScanMemory)
from shared.store import ObjectInfo, ObjectMissing, Store, StoreError, TooLarge, check_key


def group_versions(listing: list[ObjectInfo]) -> dict[int, dict[str, ObjectInfo]]:
    """The objects of a base path's listing by version: ``<n>/<rest>`` -> {rest: info}.
    Two prefixes of one number (``10/`` and ``010/``) are both left out: which one is the
    version is not ours to guess (``scan_versions`` says why)."""
    return {number: files for number, (_, files) in scan_versions(listing)[0].items()}


def scan_versions(listing: list[ObjectInfo]
                  ) -> tuple[dict[int, tuple[str, dict[str, ObjectInfo]]], dict[int, str]]:
    """The listing by version number: {n: (its prefix's name, {rest: info})}, and {n: why it
    is left out} for a number that names two prefixes, or whose prefix could not be listed
    whole (``Listing.unreadable``)."""
    grouped: dict[int, tuple[str, dict[str, ObjectInfo]]] = {}
    refused: dict[int, str] = {}
    for info in listing:
        head, sep, rest = info.key.partition("/")
        if not (sep and rest and layout.is_version_name(head)):
            continue
        number = int(head)
        name, files = grouped.setdefault(number, (head, {}))
        if name != head:
            refused[number] = f"two prefixes name version {number}: {name}/ and {head}/"
        files[rest] = info
    for prefix in getattr(listing, "unreadable", ()):
        head = prefix.strip("/")
        if layout.is_version_name(head):
            refused[int(head)] = f"a key under {prefix} is not a path the client can read"
    for number in refused:
        grouped.pop(number, None)
    return grouped, refused


def complete_versions(store: Store, memory: ScanMemory | None = None) -> list[RemoteVersion]:
    """The versions under ``store`` (a base path) a reader may take, oldest first: one LIST,
    plus a GET of each new manifest and of each other tool's new ``variables.index``. Pass the
    same ``memory`` at each poll: without it, no other tool's version is ever proven (its sizes
    must be seen unchanged twice). Why each other version was not taken is left in
    ``memory.incomplete``. Raises TransientStoreError when the store cannot be listed: what is
    complete is unknown then, which is not the same as nothing."""
    memory = memory if memory is not None else ScanMemory()
    listing = store.list()
    grouped, refused = scan_versions(listing)
    complete, memory.incomplete = [], dict(refused)
    for number in sorted(grouped):
        name, files = grouped[number]
        if MANIFEST_NAME in files:
            found = _with_manifest(store, memory, number, files)
        elif number in memory.ours:  # our manifest went first: being retired, not foreign
            found = "its manifest was deleted (retired)"
        else:
            found = _proven(store, memory, number, files)
        if isinstance(found, str):
            memory.incomplete[number] = found
        else:
            complete.append(replace(found, name="" if name == str(number) else name))
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
    unsafe = [rest for rest in files if not _is_safe(rest)]
    if unsafe:  # a fetch would write it outside the version's dir
        return f"a key {unsafe[0]!r} is not a plain relative path"
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


def _is_safe(key: str) -> bool:
    try:
        check_key(key)
    except StoreError:
        return False
    return True


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
