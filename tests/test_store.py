"""The object-store layer (shared.store), the bucket's commit protocol (shared.remote) and the
producer's upload, against a real S3 endpoint (moto's server on 127.0.0.1, tests/objstore.py),
real TensorFlow SavedModels and boto3 as the "other tool" that writes versions without us.

TensorFlow runs in one place only: the producer, forked warm (``tests.helpers.warm``), which
publishes to a bucket through an outage once per module (``produced``); its committed local
versions and checkpoints are the SavedModels and TF-written indexes every other test reads. This
process never imports TensorFlow (a second import costs 5-25 s on the shared machine)."""

from __future__ import annotations

import base64
import random
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from harness.processes import Process
from shared import bundle_index, layout, remote, store
from shared.remote_writer import upload_order
from tests.helpers import warm
from tests.objstore import client, make_bucket, s3_bucket, s3_endpoint  # noqa: F401 - fixtures

STEPS, EVERY, KEEP = 30, 10, 2  # the producer's run: versions 10, 20, 30; 20 and 30 kept
V1, V2 = 20, 30  # the local SavedModels the other tests publish


@dataclass
class Produced:
    url: str
    staging: Path
    process: Process
    code: int | None


@pytest.fixture(scope="module")
def produced(s3_endpoint, tmp_path_factory) -> Produced:
    """``python -m producer --export-dir s3://...`` once for the module, the store throttling
    (503 SlowDown) from its start until the uploader has met it."""
    tmp = tmp_path_factory.mktemp("producer")
    url = make_bucket(s3_endpoint.url) + "/linear"
    s3_endpoint.fault(60, status=503, code="SlowDown")

    def on_event(event: dict) -> None:
        if event["event"] == "upload_failed":
            s3_endpoint.fault(0)

    producer = warm("producer", "--log-format", "json", "--export-dir", url,
                    "--staging-dir", tmp / "staging", "--steps", STEPS,
                    "--export-every", EVERY, "--checkpoint-every", EVERY,
                    "--keep-exports", KEEP, on_event=on_event)
    try:
        code = producer.wait(120)
    finally:
        s3_endpoint.fault(0)
    return Produced(url, tmp / "staging", producer, code)


@pytest.fixture(scope="module")
def saved_models(produced) -> Path:
    """The producer's local export dir: real SavedModels V1 and V2 of the linear model."""
    assert produced.code == 0, produced.process.stderr
    return produced.staging


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path) -> store.Store:
    if request.param == "local":
        return store.open_store(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    return store.open_store(make_bucket(endpoint.url) + "/some/prefix")


def test_store_contract(any_store, tmp_path):
    """One behaviour for a local dir and a bucket: listing with sizes and ETags, a bounded
    conditional GET, ranged download, upload, ordered delete."""
    first = any_store.put("a/pointer.json", b'{"n": 1}')
    assert any_store.get("a/pointer.json") == store.Got(b'{"n": 1}', first.etag)
    assert any_store.get("a/pointer.json", if_none_match=first.etag).unchanged
    second = any_store.put("a/pointer.json", b'{"n": 22}')
    assert any_store.get("a/pointer.json", if_none_match=first.etag).data == b'{"n": 22}'
    with pytest.raises(store.TooLarge):
        any_store.get("a/pointer.json", limit=4)
    with pytest.raises(store.ObjectMissing):
        any_store.get("a/none.json")

    big = tmp_path / "big.bin"
    big.write_bytes(random.randbytes(3 * 1024 * 1024 + 17))
    uploaded = any_store.child("b").upload(big, "c/big.bin")
    listed = {info.key: info for info in any_store.list()}
    assert set(listed) == {"a/pointer.json", "b/c/big.bin"}
    assert listed["b/c/big.bin"].size == big.stat().st_size == uploaded.size
    assert listed["a/pointer.json"].etag == second.etag
    out = tmp_path / "out.bin"
    # 1 MiB parts: four ranged reads, three at a time, reassembled in place
    any_store.download("b/c/big.bin", out, size=uploaded.size, etag=listed["b/c/big.bin"].etag,
                       parallel=3, part_size=1 << 20)
    assert out.read_bytes() == big.read_bytes()
    any_store.delete(["a/pointer.json", "a/never-there"])
    assert [info.key for info in any_store.list()] == ["b/c/big.bin"]
    assert any_store.list("nothing/here") == []
    any_store.put("d/e", b"")
    with pytest.raises(store.TooLarge):  # the bound is checked as the listing grows
        any_store.list(limit=1)


def test_bad_urls_and_keys_are_refused(tmp_path):
    with pytest.raises(store.StoreError, match="not supported"):
        store.open_store("hdfs://namenode/models")
    with pytest.raises(store.StoreError, match="no bucket"):
        store.open_store("s3:///prefix")
    with pytest.raises(store.StoreError, match="bad key"):
        store.check_key("1/../../etc/passwd")
    with pytest.raises(store.StoreError, match="bad key"):
        store.open_store(tmp_path / "root").list("../")  # never a listing outside the root
    assert store.is_remote("gs://b/p") and not store.is_remote("/models/gs://x")


def test_object_replaced_mid_download_is_not_mixed(s3_bucket, tmp_path):
    """Each ranged read carries If-Match: parts of two objects are never stitched together."""
    bucket = store.open_store(s3_bucket)
    bucket.put("x.bin", b"a" * 1000)
    stale = bucket.list()[0]
    bucket.put("x.bin", b"b" * 1000)
    with pytest.raises(store.TransientStoreError, match="changed"):
        bucket.download("x.bin", tmp_path / "x", size=stale.size, etag=stale.etag)


@pytest.mark.parametrize("status, code, transient", [
    (503, "SlowDown", True), (500, "InternalError", True), (429, "TooManyRequests", True),
    (400, "RequestTimeout", True),  # S3 sends it as a 400; botocore retries it too
    (403, "AccessDenied", False), (401, "Unauthorized", False), (400, "InvalidArgument", False)])
def test_errors_are_transient_or_refused_and_quick(s3_endpoint, s3_bucket, status, code,
                                                   transient):
    """"Not now" (SlowDown, 5xx, 429, RequestTimeout) is TransientStoreError, within the
    library's short retries; a refusal (403, 401, another 400) is StoreError at once, never
    retried as if it would pass."""
    bucket = store.open_store(s3_bucket)
    s3_endpoint.fault(30, status=status, code=code)
    started = time.monotonic()
    try:
        for call in (bucket.list, lambda: bucket.get("x")):
            with pytest.raises(store.StoreError, match=code) as raised:
                call()
            assert isinstance(raised.value, store.TransientStoreError) == transient
    finally:
        s3_endpoint.fault(0)
    # RETRIES: 10 s at most a call when transient; a refusal is not retried (ms, 5 s: load)
    assert time.monotonic() - started < (24 if transient else 5)


# A checkpoint TF 2.21 saved across two devices, so in two data shards (400 and 168 bytes):
#   with tf.device("/cpu:0"): a = v1.get_variable("a", initializer=tf.ones([100], tf.float32))
#   with tf.device("/cpu:1"): b = v1.get_variable("b", initializer=tf.ones([7, 3], tf.float64))
#   v1.train.Saver([a, b], sharded=True).save(session, prefix, write_meta_graph=False)
#   (session config device_count={"CPU": 2}); its .index, base64:
TWO_SHARD_INDEX = base64.b64decode(
    "AAAGCAIaAggBAAEQYQgBEgQSAghkKJADNYkMsyoAARZiCAISCBICCAcSAggDGAEoqAE1bM/6iAAAAAABAAAAAPr6"
    "WcEAAAAAAQAAAADA8qGwAAECYwA/AAAAAAEAAAAAatUUV0QIUQ4AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAABX+4CLJHVH2w==")


def test_bundle_index_names_every_shard_and_its_size(saved_models):
    """The pure-Python index reader agrees with TF's writer: for each checkpoint and SavedModel
    the producer's TensorFlow just wrote, every data shard is named and exactly as long as its
    last tensor's end; for TF's two-shard checkpoint, both shards with their sizes."""
    indexes = sorted(layout.checkpoints_dir(saved_models).glob("*.index")) + \
        [layout.savedmodel_path(saved_models, v) / remote.INDEX_KEY for v in (V1, V2)]
    assert len(indexes) >= 4
    for index in indexes:
        sizes = bundle_index.required_sizes(index.read_bytes())
        stem = index.name[:-len(".index")]
        on_disk = {p.name[len(stem) + 1:]: p.stat().st_size
                   for p in index.parent.glob(f"{stem}.data-*")}
        assert {name[len("variables."):]: size for name, size in sizes.items()} == on_disk
    assert bundle_index.required_sizes(TWO_SHARD_INDEX) == {
        "variables.data-00000-of-00002": 400, "variables.data-00001-of-00002": 168}
    with pytest.raises(bundle_index.BundleIndexError):
        bundle_index.required_sizes(b"\0" * 100)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _block(entries: list[tuple[int, bytes, bytes]]) -> bytes:
    """An SSTable block of (shared, new key bytes, value) entries, no restarts."""
    body = b"".join(_varint(shared) + _varint(len(fresh)) + _varint(len(value)) + fresh + value
                    for shared, fresh, value in entries)
    return body + struct.pack("<I", 0)


def _table(blocks: list[bytes], handles: list[tuple[int, int]] | None = None) -> bytes:
    """An SSTable (tensorflow/core/lib/io/format.cc): ``blocks``, an index block naming them
    (or ``handles``), the footer."""
    out, named = b"", []
    for block in blocks:
        named.append((len(out), len(block)))
        out += block + b"\0" * bundle_index.TRAILER
    index = _block([(0, b"k%d" % i, _varint(o) + _varint(n))
                    for i, (o, n) in enumerate(handles or named)])
    footer = (_varint(0) + _varint(0) + _varint(len(out)) + _varint(len(index))).ljust(40, b"\0")
    return out + index + b"\0" * bundle_index.TRAILER + footer + \
        struct.pack("<Q", bundle_index.MAGIC)


def _header(shards: int) -> tuple[int, bytes, bytes]:
    return 0, b"", b"\x08" + _varint(shards)  # BundleHeaderProto.num_shards = 1


def _entry(name: bytes, shard: int, offset: int, size: int) -> tuple[int, bytes, bytes]:
    return 0, name, b"\x18" + _varint(shard) + b"\x20" + _varint(offset) + b"\x28" + _varint(size)


def test_a_hostile_index_costs_nothing_beyond_its_bytes():
    """A variables.index built to make its reader spend: an absurd shard count, keys that
    grow by one byte an entry (quadratic if keys were built), the same data block named again
    and again. Each is refused at once; a well-formed table of the same builder reads."""
    good = _table([_block([_header(2), _entry(b"a", 1, 8, 40)])])
    assert bundle_index.required_sizes(good) == {"variables.data-00000-of-00002": 0,
                                                 "variables.data-00001-of-00002": 48}
    started = time.monotonic()
    with pytest.raises(bundle_index.BundleIndexError, match="shards"):
        bundle_index.required_sizes(_table([_block([_header(bundle_index.MAX_SHARDS + 1)])]))
    step = 4096  # each entry keeps the key so far and adds 4 KiB to it
    growing = [_header(1)] + [(i * step, b"x" * step, b"")
                              for i in range(bundle_index.MAX_KEY // step + 2)]
    with pytest.raises(bundle_index.BundleIndexError, match="key of"):
        bundle_index.required_sizes(_table([_block(growing)]))
    block = _block([_header(1), _entry(b"a", 0, 0, 4)])
    with pytest.raises(bundle_index.BundleIndexError, match="overlaps"):
        bundle_index.required_sizes(_table([block], handles=[(0, len(block))] * 1000))
    assert time.monotonic() - started < 5


def test_publish_fetch_round_trip_and_pointer(s3_endpoint, saved_models, tmp_path):
    """Our writer's version is complete at once (its manifest), fetched byte for byte; the
    pointer changes at each commit and a poll of an unchanged one is one request."""
    base = store.open_store(make_bucket(s3_endpoint.url) + "/m/savedmodels")
    with pytest.raises(store.ObjectMissing):
        remote.read_pointer(base)
    local = layout.savedmodel_path(saved_models, V1)
    remote.publish(base, 10, local)
    pointer = remote.read_pointer(base)
    assert pointer.versions == (10,)
    s3_endpoint.reset()
    assert remote.read_pointer(base, pointer.etag) is None  # unchanged
    assert s3_endpoint.requests()["total"] == 1

    found = remote.complete_versions(base, remote.ScanMemory())
    assert [v.version for v in found] == [10] and found[0].manifest is not None
    dest = remote.fetch(base, found[0], tmp_path / "cache" / "10")
    for path in found[0].manifest.files:
        assert (dest / path).read_bytes() == (local / path).read_bytes()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".tmp-")]
    assert layout.savedmodel_is_complete(dest)

    remote.publish(base, 20, layout.savedmodel_path(saved_models, V2))
    assert remote.read_pointer(base, pointer.etag).versions == (10, 20)
    base.put(remote.POINTER_NAME, b"[" * 100_000)  # not ours: read as no pointer, so listed
    with pytest.raises(store.ObjectMissing):
        remote.read_pointer(base)


def test_upload_order_puts_the_graph_after_the_variables():
    order = upload_order(
        ["saved_model.pb", "commit.json", "variables/variables.index", "zz-extra.json",
         "variables/variables.data-00000-of-00001", "assets/vocab.txt"])
    assert order.index("variables/variables.data-00000-of-00001") < \
        order.index("variables/variables.index") < order.index("saved_model.pb")
    assert order[-1] == "saved_model.pb"


def test_a_damaged_file_fails_its_fetch_and_leaves_nothing(s3_endpoint, saved_models, tmp_path):
    base = store.open_store(make_bucket(s3_endpoint.url))
    remote.publish(base, 10, layout.savedmodel_path(saved_models, V1))
    shard = "10/variables/variables.data-00000-of-00001"
    length = next(i.size for i in base.list() if i.key == shard)
    base.put(shard, b"\xff" * length)  # same size, other bytes: only the sha256 tells
    version = remote.complete_versions(base)[0]
    with pytest.raises(remote.FetchError, match="sha256"):
        remote.fetch(base, version, tmp_path / "10")
    assert list(tmp_path.iterdir()) == []


def _other_tool_upload(bucket: str, prefix: str, local: Path, files: list[str],
                       truncate: str | None = None) -> None:
    s3 = client(store.endpoint_for_s3())
    name, _, key_prefix = bucket[5:].partition("/")
    for path in files:
        body = (local / path).read_bytes()
        if path == truncate:
            body = body[:-1]
        s3.put_object(Bucket=name, Key=f"{key_prefix}{prefix}{path}".lstrip("/"), Body=body)


def test_other_tools_versions_are_taken_only_when_provably_complete(s3_endpoint, saved_models):
    """Files uploaded one by one in a random order (as ``aws s3 sync`` may): no scan takes the
    version before every file is there and two listings agree; a truncated shard never."""
    bucket = make_bucket(s3_endpoint.url)
    base = store.open_store(bucket)
    local = layout.savedmodel_path(saved_models, V1)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    random.Random(7).shuffle(files)
    memory = remote.ScanMemory()
    for count in range(1, len(files) + 1):
        _other_tool_upload(bucket, "10/", local, files[count - 1:count])
        assert remote.complete_versions(base, memory) == [], files[:count]
        assert 10 in memory.incomplete
    taken = remote.complete_versions(base, memory)  # the second listing with the same sizes
    assert [v.version for v in taken] == [10] and taken[0].manifest is None

    shard = "variables/variables.data-00000-of-00001"
    _other_tool_upload(bucket, "11/", local, files, truncate=shard)
    for _ in range(3):
        assert [v.version for v in remote.complete_versions(base, memory)] == [10]
    assert "the index needs" in memory.incomplete[11]


def test_a_bad_or_huge_manifest_costs_only_its_own_version(s3_endpoint, saved_models):
    """A manifest past its bound is refused before its body is read, one that is not ours is
    not parsed as one: each leaves its own version out, never the scan."""
    base = store.open_store(make_bucket(s3_endpoint.url))
    remote.publish(base, 10, layout.savedmodel_path(saved_models, V1))
    base.put(f"11/{remote.MANIFEST_NAME}", b" " * (remote.MANIFEST_LIMIT + 1))
    base.put(f"12/{remote.MANIFEST_NAME}", b'{"files": {"../../etc/passwd": {}}}')
    base.put(f"13/{remote.MANIFEST_NAME}", b"[" * 100_000)  # deeper than Python recurses
    memory = remote.ScanMemory()
    assert [v.version for v in remote.complete_versions(base, memory)] == [10]
    assert "more than" in memory.incomplete[11]
    assert "not a manifest of ours" in memory.incomplete[12]
    assert "RecursionError" in memory.incomplete[13]


def test_a_retired_version_is_not_taken_while_its_files_go(s3_endpoint, saved_models):
    base = store.open_store(make_bucket(s3_endpoint.url))
    remote.publish(base, 10, layout.savedmodel_path(saved_models, V1))
    memory = remote.ScanMemory()
    assert [v.version for v in remote.complete_versions(base, memory)] == [10]
    base.delete(["10/" + remote.MANIFEST_NAME])  # retire's first step, and a crash after it
    for _ in range(2):
        assert remote.complete_versions(base, memory) == []
    remote.retire(base, 10)
    assert base.list() == [next(i for i in base.list() if i.key == remote.POINTER_NAME)]
    assert remote.read_pointer(base).versions == ()


def test_producer_publishes_to_a_bucket_through_an_outage(produced):
    """``--export-dir s3://...``: versions committed locally, uploaded with the manifest last,
    the bucket's retention as the local one; a throttled store at the start is logged once,
    retried, and training goes on."""
    producer = produced.process
    assert produced.code == 0, producer.stderr
    assert len(producer.named("upload_failed")) == 1
    assert len(producer.named("upload_recovered")) == 1
    assert producer.named("training_finished")[0]["step"] == STEPS
    kept = [STEPS - EVERY * i for i in reversed(range(KEEP))]
    base = store.open_store(produced.url).child("savedmodels")
    assert remote.committed_versions(base) == kept
    assert remote.read_pointer(base).versions == tuple(kept)
    assert [v.version for v in remote.complete_versions(base)] == kept
    assert store.open_store(produced.url).get("export.json").data == b'{"model": "linear"}'
    assert [v.step for v in layout.savedmodel_versions(produced.staging)] == kept


def test_producer_refuses_a_bucket_it_cannot_use(s3_endpoint, tmp_path):
    """A missing bucket, or one holding another model's versions, fails at the start (exit 2,
    one line) before any training; a store that is only down does not (the test above)."""
    from tests.helpers import run_warm

    missing = run_warm("producer", "--export-dir", "s3://no-such-bucket-here/x",
                       "--staging-dir", tmp_path / "a", "--steps", 1, timeout=60)
    assert missing.returncode == 2 and "NoSuchBucket" in missing.stderr, missing.stderr
    url = make_bucket(s3_endpoint.url)
    store.open_store(url).put("export.json", b'{"model": "mlp"}')
    other = run_warm("producer", "--export-dir", url, "--staging-dir", tmp_path / "b",
                     "--steps", 1, timeout=60)
    assert other.returncode == 2 and "model 'mlp', not 'linear'" in other.stderr, other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def _files_of(local: Path) -> list[str]:
    return sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())


def test_hostile_keys_cost_their_own_version_and_write_nothing_outside(s3_endpoint,
                                                                       saved_models, tmp_path):
    """S3 keys are any string: ``10/../../evil/x`` breaks the client library's paths. The
    listing goes on around it (that version left out, named), and a fetch of a version naming
    such a path fails before anything is created."""
    bucket = make_bucket(s3_endpoint.url)
    base = store.open_store(bucket)
    remote.publish(base, 11, layout.savedmodel_path(saved_models, V1))
    s3 = client(s3_endpoint.url)
    for key in ("10/saved_model.pb", "10/../../evil/x", "12/a//b"):
        s3.put_object(Bucket=bucket[5:], Key=key, Body=b"1")
    memory = remote.ScanMemory()
    assert [v.version for v in remote.complete_versions(base, memory)] == [11]
    assert "not a path the client can read" in memory.incomplete[10]
    assert 12 in memory.incomplete

    local = store.open_store(tmp_path / "local")
    local.put("10/saved_model.pb", b"1")
    hostile = remote.RemoteVersion(10, {"../../escape/x": store.ObjectInfo(
        "10/../../escape/x", 1, None)}, None)
    cache = tmp_path / "deep" / "cache"
    cache.mkdir(parents=True)
    with pytest.raises(remote.FetchError, match="bad key"):
        remote.fetch(local, hostile, cache / "10")
    assert list((tmp_path / "deep").rglob("*")) == [cache]  # no deep/escape/, no staging


def test_a_zero_padded_version_is_read_from_its_own_prefix(s3_endpoint, saved_models, tmp_path):
    """``0010/`` is version 10, as TF Serving reads it (safe_strto64), fetched from ``0010/``;
    with ``10/`` beside it, which one is version 10 is not guessed: neither is taken."""
    bucket = make_bucket(s3_endpoint.url)
    base = store.open_store(bucket)
    local = layout.savedmodel_path(saved_models, V1)
    _other_tool_upload(bucket, "0010/", local, _files_of(local))
    memory = remote.ScanMemory()
    remote.complete_versions(base, memory)
    [version] = remote.complete_versions(base, memory)
    assert (version.version, version.prefix) == (10, "0010/")
    dest = remote.fetch(base, version, tmp_path / "10")
    assert _files_of(dest) == _files_of(local)
    _other_tool_upload(bucket, "10/", local, _files_of(local))
    for _ in range(2):
        assert remote.complete_versions(base, memory) == []
    assert "two prefixes" in memory.incomplete[10]


def test_a_version_retired_during_its_fetch_fails_that_fetch_only(s3_endpoint, saved_models,
                                                                  tmp_path):
    """The writer may retire a version a reader has just listed: the fetch is a FetchError
    (that version backs off), not an error of the store, and leaves nothing behind."""
    base = store.open_store(make_bucket(s3_endpoint.url))
    remote.publish(base, 10, layout.savedmodel_path(saved_models, V1))
    [version] = remote.complete_versions(base)
    remote.retire(base, 10)
    with pytest.raises(remote.FetchError, match="went or changed"):
        remote.fetch(base, version, tmp_path / "10")
    assert list(tmp_path.iterdir()) == []


def _wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_uploader_logs_each_condition_once_and_survives_every_kind(s3_endpoint,
                                                                       saved_models, tmp_path):
    """The producer's uploader thread, in this process: a store down (503), then the local dir
    unreadable (ELOOP: not a store error), then access denied (403): each logged once when it
    starts, however many passes fail, none ending the thread; then it clears, logged once,
    and the version is uploaded."""
    from producer.upload import Uploader

    root = tmp_path / "exports"
    root.mkdir()
    (root / layout.SAVEDMODELS).symlink_to(layout.SAVEDMODELS)  # a loop: ELOOP when listed
    url = make_bucket(s3_endpoint.url) + "/m"
    uploader = Uploader(root, url, "linear", keep=KEEP)
    with structlog.testing.capture_logs() as events:
        def conditions() -> list[str]:
            return [e["condition"] for e in events if e["event"] == "upload_failed"]

        try:
            s3_endpoint.fault(60, status=503, code="SlowDown")
            uploader.start()
            _wait_for(lambda: conditions() == ["unavailable"])
            for _ in range(2):  # more passes, the same condition: no more lines
                failures = uploader.failures
                uploader.kick()
                _wait_for(lambda: uploader.failures > failures)
            s3_endpoint.fault(0)
            uploader.kick()
            _wait_for(lambda: conditions() == ["unavailable", "local"])
            s3_endpoint.fault(60, status=403, code="AccessDenied")
            uploader.kick()
            _wait_for(lambda: conditions() == ["unavailable", "local", "refused"])
            assert "AccessDenied" in uploader.last_error  # for the producer's final line
            s3_endpoint.fault(0)
            (root / layout.SAVEDMODELS).unlink()
            shutil.copytree(layout.savedmodel_path(saved_models, V1),
                            layout.savedmodel_path(root, V1))
            assert uploader.finish(30)
        finally:
            s3_endpoint.fault(0)
            uploader.closing = True
            uploader.wake.set()
    assert not uploader.thread.is_alive()
    assert conditions() == ["unavailable", "local", "refused"]
    [recovered] = [e for e in events if e["event"] == "upload_recovered"]
    assert recovered["failures"] >= 5  # every failed pass counted, three lines logged
    assert remote.committed_versions(store.open_store(url).child("savedmodels")) == [V1]


def test_each_module_of_the_protocol_imports_on_its_own():
    """``shared.remote`` names its scan, fetch and writer, which import it: any of them imported
    first, in a fresh interpreter, must work (no import cycle)."""
    import subprocess
    import sys

    from harness.processes import REPO

    for module in ("shared.remote_scan", "shared.remote_fetch", "shared.remote_writer"):
        done = subprocess.run([sys.executable, "-c", f"import {module}; from shared.remote "
                               "import fetch, publish, complete_versions"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-500:]
