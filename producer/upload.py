"""Publishing to a bucket (``--export-dir s3://bucket/prefix`` or ``gs://...``): each version is
committed locally first, in a staging export dir, exactly as for a local export dir; a thread
then brings the bucket in line with it, so training never waits on the store.

The bucket's layout (``shared.remote``): ``<url>/export.json``, and the SavedModels at
``<url>/savedmodels/<n>/`` with our manifest written last in each, and the pointer readers poll
at ``<url>/savedmodels/tf-handoff-pointer.json``. Checkpoints stay local: they are the
trainer's state to resume from, not versions to serve.

Each sync is one LIST of the bucket's committed versions, then the uploads of the local
versions it lacks (oldest first), then retention: the bucket keeps the newest
``--keep-exports`` of its committed versions, as the local dir does, retiring the oldest first
(manifest first). A sync that fails (the store down, throttling) is logged once when the
trouble starts (again when it changes kind: a store down, then access denied) and once when
it clears, and retried with back-off (1 s doubling to 60 s) while training goes on; a defect of
ours in a pass is logged the same way, with its traceback, and the thread goes on.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from shared import layout, logs, remote, store

log = logs.get("producer")
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0


class Uploader:
    """Keeps ``url`` in line with the committed SavedModels of the local export dir ``root``."""

    def __init__(self, root: Path, url: str, model: str, keep: int) -> None:
        self.root, self.url, self.model, self.keep = Path(root), url, model, keep
        self.base = store.open_store(url).child(layout.SAVEDMODELS)
        self.top = store.open_store(url)
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.synced = threading.Event()  # set while the bucket holds what the dir holds
        self.closing = False
        self.failures = 0  # in a row; logged when it becomes 1 and when it returns to 0
        self.condition: str | None = None  # the kind of trouble last logged
        self.last_error = ""  # of the last failed pass, for the producer's final word
        self.down_since: float | None = None
        self.thread = threading.Thread(target=self._run, name="uploader", daemon=True)

    def start(self) -> "Uploader":
        self.wake.set()
        self.thread.start()
        return self

    def kick(self) -> None:
        """A version was committed or retired locally: sync soon."""
        self.synced.clear()
        self.wake.set()

    def finish(self, timeout: float) -> bool:
        """Sync once more and wait up to ``timeout`` seconds for the bucket to hold every local
        version; True if it does."""
        self.kick()
        done = self.synced.wait(timeout)
        self.closing = True
        self.wake.set()
        self.thread.join(min(timeout, 5.0))  # a pass in flight ends at its next request
        return done

    def _run(self) -> None:
        delay = 0.0
        while not self.closing:
            self.wake.wait(delay if delay else None)
            self.wake.clear()
            if self.closing:
                return
            try:
                self.sync()
            except Exception as err:  # supervised: a store's refusal or a defect of ours
                delay = min(BACKOFF_MAX, max(BACKOFF_FIRST, delay * 2))
                self._failed(err, delay)
                continue
            delay = 0.0
            self._recovered()

    def sync(self) -> None:
        """One pass: upload what the bucket lacks, then retire what it keeps too many of."""
        remote_versions = set(remote.committed_versions(self.base))
        if not remote_versions:
            self._put_export_json()
        local = layout.savedmodel_versions(self.root)
        wanted = sorted(remote_versions | {v.step for v in local})
        kept = set(wanted[-self.keep:] if self.keep else wanted)
        for version in local:
            if version.step not in remote_versions and version.step in kept:
                self._upload(version)
                remote_versions.add(version.step)
        for step in sorted(remote_versions - kept):
            remote.retire(self.base, step)
            log.info("remote_version_retired", step=step, url=f"{self.base.url}/{step}")
        if not self.wake.is_set():  # nothing was committed during the pass
            self.synced.set()

    def _upload(self, version: layout.Version) -> None:
        started = time.perf_counter()
        try:
            manifest = remote.publish(self.base, version.step, version.path)
        except FileNotFoundError:  # retired locally while it was read: the next pass skips it
            return
        log.info("version_uploaded", step=version.step, url=f"{self.base.url}/{version.step}",
                 files=len(manifest.files), bytes=sum(e.size for e in manifest.files.values()),
                 seconds=round(time.perf_counter() - started, 3),
                 lag_seconds=round(time.time() - version.committed_at, 3))

    def _put_export_json(self) -> None:
        manifest = layout.read_manifest(self.root) or {"model": self.model}
        self.top.put(layout.MANIFEST, json.dumps(manifest).encode())

    def _failed(self, err: Exception, delay: float) -> None:
        """Log the trouble when it starts and when its kind changes (unavailable -> refused):
        a store that goes from down to access denied must not stay hidden behind the first
        line."""
        self.failures += 1
        self.last_error = f"{str(err) or type(err).__name__}"[:300]
        condition = ("unavailable" if isinstance(err, store.TransientStoreError) else
                     "refused" if isinstance(err, store.StoreError) else
                     "local" if isinstance(err, OSError) else "defect")
        if self.failures == 1:
            self.down_since = time.monotonic()
        if condition == self.condition:
            return
        self.condition = condition
        fields = dict(url=self.url, error=self.last_error,
                      condition=condition, transient=condition == "unavailable",
                      failures=self.failures, retry_in_seconds=delay)
        if condition == "defect":
            log.exception("upload_failed", **fields)
        else:
            log.warning("upload_failed", **fields)

    def _recovered(self) -> None:
        if self.failures:
            log.info("upload_recovered", url=self.url, failures=self.failures,
                     seconds=round(time.monotonic() - (self.down_since or time.monotonic()), 3))
        self.failures, self.down_since, self.condition = 0, None, None


def check_bucket(url: str, model: str) -> None:
    """Before training: raise LayoutError if the bucket cannot be used for good (no such
    bucket, access denied) or holds another model's versions. A store that is only down now
    does not stop the start: the uploader retries."""
    try:
        got = store.open_store(url).get(layout.MANIFEST)
    except store.ObjectMissing:
        return
    except store.TransientStoreError:  # the uploader logs it, once, if it lasts
        return
    except store.StoreError as err:
        raise layout.LayoutError(f"--export-dir {url}: {err}") from None
    try:
        named = json.loads(got.data).get("model")
    except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, too deep
        named = None
    if named != model:
        raise layout.LayoutError(f"--export-dir {url} holds versions of model {named!r}, "
                                 f"not {model!r}")


def staging_dir_for(url: str, work: Path = Path("work")) -> Path:
    """The default local export dir for a bucket URL: ``work/staging/<scheme>/<bucket>/<prefix>``
    (relative to the working directory), one per URL, so that two producers on two buckets
    never share one and a restart on the same URL resumes from its checkpoints."""
    scheme, _, rest = url.partition("://")
    parts = [p for p in rest.split("/") if p and p not in (".", "..")]
    return work / "staging" / scheme / Path(*parts)
