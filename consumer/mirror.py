"""The mirror: a model's versions on an object store (``s3://``, ``gs://``), copied into a local
cache dir that the model's unchanged loop (inotify source, loader, gate, warm swap) reads as its
base path.

One supervised thread per model polls the store every ``--file_system_poll_wait_seconds`` (TF
Serving's flag, 1 s by default; 0 polls once, less never: ``file_system_storage_path_source.proto``
``file_system_poll_wait_seconds``). A poll is one conditional GET of the pointer our writer
rewrites after each commit (``shared.remote.read_pointer``: "unchanged" costs no LIST), and a
LIST only when the pointer moved, when there is none (another tool's bucket), or while something
waits to be seen again (another tool's version not yet proven complete, a download in back-off);
plus one LIST every ``SAFETY_LIST_SECONDS`` in case a pointer write was lost.

Of the complete versions (``shared.remote.complete_versions``: our manifest, or provably complete
from the checkpoint index), the version policy (latest N, specific, all) names those wanted;
each one not cached is downloaded, the newest first (``shared.remote.fetch``: staging dir, checks,
one rename). Cached versions neither wanted nor in use by the loop (available, loading, or in a
load back-off) are evicted; a version the loop passed over (refused by the gate, out of load
retries) stays cached while it is listed, so that it is not downloaded and refused again and
again, and the policy is applied to the others (a model never goes dark because its newest
version is broken).

Conditions, each logged when it starts and when it clears, the live version answering
throughout:
- the store unreachable (connection refused, timeout, 5xx): polled again at the poll interval,
  so a store that returns is read within one poll; throttled (SlowDown, 429, 503): back-off
  doubling up to ``THROTTLE_BACKOFF_MAX``; refused (no bucket, access denied): every
  ``REFUSED_RETRY_SECONDS``.
- the cache's disk full (``cache_full``): tried again every ``FULL_RETRY_SECONDS``.
- a version whose download fails its checks: that version (that identity) is tried again after
  a back-off doubling from ``DOWNLOAD_BACKOFF[0]`` to ``DOWNLOAD_BACKOFF[1]``: a few dozen tries
  a day at most, never thousands; meanwhile the policy picks among the others.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from consumer.mirror_cache import Cache, is_full
from consumer.mirror_hooks import Candidate, Hooks, Policy, local_config, loop_hooks  # noqa: F401
from consumer.remote_base import RemoteBase
from shared import logs, remote, store
from shared.durable import write_atomic

log = logs.get("consumer")

SAFETY_LIST_SECONDS = 300.0  # a LIST this often even while the pointer says nothing changed
THROTTLE_BACKOFF_MAX = 30.0  # seconds between polls of a store that asks us to slow down
REFUSED_RETRY_SECONDS = 30.0  # a bucket missing or forbidden: it may be created or granted
FULL_RETRY_SECONDS = 10.0  # a full cache disk: looked at again this often
DOWNLOAD_BACKOFF = (2.0, 600.0)  # a version failing its checks: first retry, and the longest
RESTART_BACKOFF = (1.0, 30.0)  # the thread's own supervisor, after a defect of ours
_THROTTLED = ("slowdown", "slow down", "throttl", "toomanyrequests", "429", "503",
              "requestlimitexceeded")


@dataclass
class _Failure:
    identity: tuple
    attempts: int
    retry_at: float  # monotonic


class Mirror:
    def __init__(self, base: RemoteBase, cache_root: Path, kind: str, hooks: Hooks, *,
                 poll: float, model: str = "") -> None:
        """``kind`` "base": ``<url>/<n>/`` into ``<cache_root>/<n>/`` (TF Serving's layout);
        "savedmodel": a producer's export dir, ``<url>/savedmodels/<n>/`` into
        ``<cache_root>/savedmodels/<n>/``, with its ``export.json``."""
        self.base, self.kind, self.hooks, self.poll, self.model = base, kind, hooks, poll, model
        self.root = Path(cache_root)
        self.store = store.open_store(base.url)
        self.versions_store = self.store if kind == "base" else self.store.child("savedmodels")
        self.cache = Cache(self.root if kind == "base" else self.root / "savedmodels")
        self.memory = remote.ScanMemory()
        self.listing: list[remote.RemoteVersion] | None = None  # None: not listed yet
        self.failures: dict[int, _Failure] = {}
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._pointer_etag: str | None = None
        self._pointer_missing_at: float | None = None  # monotonic: the last 404 of it
        self._listed_at = float("-inf")
        self._condition: str | None = None  # "store_unavailable", ... as last logged
        self._throttle = 0.0
        self._full_since: str | None = None
        self._has_manifest = kind == "base"
        self.polls = self.lists = self.downloads = 0  # figures for tests and the bench
        self.thread = threading.Thread(target=self._run, name="mirror", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        removed = self.cache.prepare()
        if removed:
            log.info("mirror_leftovers_removed", path=str(self.cache.dir), count=len(removed))
        self.thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self.stop.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
        log.info("mirror_stopped", model=self.model, url=self.base.url, polls=self.polls,
                 lists=self.lists, downloads=self.downloads)

    def wake(self) -> None:
        """Reconcile now (the policy changed, a version went live: one to evict)."""
        self._wake.set()

    def candidates(self) -> list[Candidate]:
        """The complete versions last listed, oldest first (for a label's check)."""
        return [Candidate(v.version, v) for v in self.listing or []]

    def _run(self) -> None:
        """Supervised: a defect of ours is logged with its cause and the loop runs again after
        a back-off; only ``close`` ends it."""
        backoff = RESTART_BACKOFF[0]
        log.info("mirror_started", model=self.model, url=self.base.url, cache=str(self.root),
                 poll_seconds=self.poll)
        while not self.stop.is_set():
            try:
                wait = self._pass()
                backoff = RESTART_BACKOFF[0]
            except Exception as err:
                log.exception("mirror_failed", model=self.model, url=self.base.url,
                              error=f"{type(err).__name__}: {err}"[:500],
                              retry_in_seconds=backoff)
                wait, backoff = backoff, min(backoff * 2, RESTART_BACKOFF[1])
            self._wake.wait(wait)
            self._wake.clear()

    # -- one pass -----------------------------------------------------------------------------

    def _pass(self) -> float | None:
        """Poll (when due), then bring the cache to what is wanted; the seconds to wait."""
        if self._poll_due():
            try:
                self._poll()
            except store.TransientStoreError as err:
                return self._store_trouble("store_unavailable", err)
            except store.StoreError as err:
                return self._store_trouble("store_refused", err)
            self._store_cleared()
        if self.listing is not None:
            try:
                self._reconcile()
            except store.TransientStoreError as err:
                return self._store_trouble("store_unavailable", err)
        return self._next_wait()

    def _poll_due(self) -> bool:
        if self.poll < 0:
            return False  # TF Serving: a negative poll disables polling
        return self.poll > 0 or self.listing is None  # 0: exactly once

    def _poll(self) -> None:
        self.polls += 1
        if not self._has_manifest:
            self._fetch_manifest()
        if self._list_needed():
            before = [v.identity for v in self.listing or []]
            self.listing = remote.complete_versions(self.versions_store, self.memory)
            if before != [v.identity for v in self.listing]:
                self._pointer_missing_at = None  # our writer may have begun: look for its pointer
            self.lists += 1
            self._listed_at = time.monotonic()
            known = {v.version for v in self.listing}
            for step in [s for s in self.failures if s not in known]:
                del self.failures[step]

    def _list_needed(self) -> bool:
        """One conditional GET of the pointer decides, where our writer keeps one. Where none
        was found lately (another tool's bucket), a LIST a poll without that GET's 404 too."""
        now = time.monotonic()
        if self._pointer_missing_at is not None and \
                now - self._pointer_missing_at < SAFETY_LIST_SECONDS:
            return True
        if self.listing is None or self.memory.incomplete or self._retry_due() or \
                now - self._listed_at >= SAFETY_LIST_SECONDS:
            self._read_pointer()  # its ETag, so the next poll's GET can say "unchanged"
            return True
        return self._read_pointer()

    def _read_pointer(self) -> bool:
        """Whether the pointer moved (or there is none: a bucket another tool writes)."""
        try:
            pointer = remote.read_pointer(self.versions_store, self._pointer_etag)
        except store.ObjectMissing:
            self._pointer_etag, self._pointer_missing_at = None, time.monotonic()
            return True
        self._pointer_missing_at = None
        if pointer is None:
            return False
        self._pointer_etag = pointer.etag
        return True

    def _retry_due(self) -> bool:
        now = time.monotonic()
        return any(f.retry_at <= now for f in self.failures.values())

    def _fetch_manifest(self) -> None:
        """A producer's export dir: its export.json (the model's name), copied once."""
        try:
            got = self.store.get("export.json")
        except store.ObjectMissing:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "export.json", got.data)
        self._has_manifest = True

    def _next_wait(self) -> float | None:
        """Until the next poll, or the end of the nearest back-off; None: until woken."""
        waits = [self.poll] if self.poll > 0 else []
        if self.failures:
            waits.append(max(0.0, min(f.retry_at for f in self.failures.values()) -
                             time.monotonic()))
        if self._full_since is not None:
            waits.append(FULL_RETRY_SECONDS)
        return min(waits) if waits else None

    # -- the store's conditions ---------------------------------------------------------------

    def _store_trouble(self, condition: str, err: Exception) -> float:
        text = str(err)
        throttled = condition == "store_unavailable" and \
            any(sign in text.lower() for sign in _THROTTLED)
        if condition != self._condition:
            log.warning(condition, model=self.model, url=self.base.url, error=text[:300],
                        throttled=throttled,
                        reason="the live version keeps answering; the store is polled again")
            self._condition = condition
        if condition == "store_refused":
            return REFUSED_RETRY_SECONDS
        if throttled:  # the store asked for fewer requests: doubling, from one poll up
            self._throttle = min(max(self._throttle * 2, self.poll, 0.5), THROTTLE_BACKOFF_MAX)
            return self._throttle
        return self.poll if self.poll > 0 else 1.0  # down: back within one poll of its return

    def _store_cleared(self) -> None:
        if self._condition is not None:
            log.info("store_recovered", model=self.model, url=self.base.url,
                     condition=self._condition)
            self._condition, self._throttle = None, 0.0

    # -- the cache ----------------------------------------------------------------------------

    def _reconcile(self) -> None:
        listing = {v.version: v for v in self.listing or []}
        passed_over = self.hooks.passed_over()
        now = time.monotonic()
        choosable = [Candidate(v.version, v) for v in self.listing or []
                     if v.version not in passed_over and not self._backing_off(v, now)]
        wanted = [c.remote for c in self.hooks.policy()(choosable)]  # newest first
        for version in wanted:
            if self.stop.is_set():
                return
            if not self.cache.holds(version.version, version.identity):
                self._download(version)
        keep = {v.version for v in wanted} | \
            ((self.hooks.in_use() | passed_over) & set(listing))
        for step in sorted(self.cache.steps() - keep):
            log.info("mirror_evicted", model=self.model, step=step,
                     reason="listed no more" if step not in listing else "not wanted, not used")
            self.cache.evict(step)

    def _backing_off(self, version: remote.RemoteVersion, now: float) -> bool:
        failure = self.failures.get(version.version)
        if failure is None:
            return False
        if failure.identity != version.identity:  # written again: a new chance at once
            del self.failures[version.version]
            return False
        return failure.retry_at > now

    def _download(self, version: remote.RemoteVersion) -> None:
        step = version.version
        if step in self.cache.steps() and step not in self.cache.identities and \
                self.cache.adopt(step, version.identity,
                                 {k: i.size for k, i in version.files.items()}):
            return  # copied by an earlier run of this server
        dest = self.cache.path(step)
        target = self.cache.staging(step) if dest.exists() else dest
        started = time.monotonic()
        try:
            remote.fetch(self.versions_store, version, target)
        except remote.FetchError as err:
            self._download_failed(version, err)
            return
        except OSError as err:
            if not is_full(err):
                raise
            self._cache_full(step, version.size, self.cache.free_bytes(), str(err))
            return
        self.cache.installed(step, version.identity, target)
        self.downloads += 1
        self.failures.pop(step, None)
        if self._full_since is not None:
            log.info("cache_full_cleared", model=self.model, path=str(self.cache.dir))
            self._full_since = None
        log.info("version_mirrored", model=self.model, step=step, bytes=version.size,
                 files=len(version.files), ours=version.manifest is not None,
                 seconds=round(time.monotonic() - started, 4))

    def _download_failed(self, version: remote.RemoteVersion, err: Exception) -> None:
        failure = self.failures.get(version.version)
        attempts = failure.attempts + 1 if failure and failure.identity == version.identity \
            else 1
        retry_in = min(DOWNLOAD_BACKOFF[0] * 2 ** (attempts - 1), DOWNLOAD_BACKOFF[1])
        self.failures[version.version] = _Failure(version.identity, attempts,
                                                  time.monotonic() + retry_in)
        log.warning("download_failed", model=self.model, step=version.version,
                    error=str(err)[:300], attempt=attempts, retry_in_seconds=retry_in,
                    reason="the other versions are served meanwhile")

    def _cache_full(self, step: int, needed: int, free: int | None, error: str) -> None:
        if self._full_since is None:
            log.error("cache_full", model=self.model, path=str(self.cache.dir), step=step,
                      needed_bytes=needed, free_bytes=free, error=error[:300],
                      reason="the live version keeps answering; tried again every "
                             f"{FULL_RETRY_SECONDS:g} s")
            self._full_since = error


def listing_once(base: RemoteBase, kind: str) -> list[Candidate]:
    """The complete versions at ``base`` now, from one LIST (another tool's versions need two:
    they are not in it); [] if the store cannot be read."""
    try:
        opened = store.open_store(base.url)
        versions = remote.complete_versions(opened if kind == "base" else
                                            opened.child("savedmodels"))
    except store.StoreError:
        return []
    return [Candidate(v.version, v) for v in versions]
