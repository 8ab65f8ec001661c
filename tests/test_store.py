"""The object-store layer (shared.store), the bucket's commit protocol (shared.remote) and the
producer's upload, against a real S3 endpoint (moto's server on 127.0.0.1, tests/objstore.py),
real TensorFlow SavedModels and boto3 as the "other tool" that writes versions without us."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from shared import bundle_index, layout, remote, store
from shared.remote_writer import upload_order
from tests.helpers import warm
from tests.objstore import client, make_bucket, s3_bucket, s3_endpoint  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> Path:
    """An export dir with two real SavedModels (10 and 20) of the linear model."""
    from tests.helpers import LinearVersions

    root = tmp_path_factory.mktemp("exports")
    versions = LinearVersions(root)
    versions.publish(10, 1.0)
    versions.publish(20, 2.0)
    versions.close()
    return root


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


def test_bad_urls_and_keys_are_refused():
    with pytest.raises(store.StoreError, match="not supported"):
        store.open_store("hdfs://namenode/models")
    with pytest.raises(store.StoreError, match="no bucket"):
        store.open_store("s3:///prefix")
    with pytest.raises(store.StoreError, match="bad key"):
        store.check_key("1/../../etc/passwd")
    assert store.is_remote("gs://b/p") and not store.is_remote("/models/gs://x")


def test_object_replaced_mid_download_is_not_mixed(s3_bucket, tmp_path):
    """Each ranged read carries If-Match: parts of two objects are never stitched together."""
    bucket = store.open_store(s3_bucket)
    bucket.put("x.bin", b"a" * 1000)
    stale = bucket.list()[0]
    bucket.put("x.bin", b"b" * 1000)
    with pytest.raises(store.TransientStoreError, match="changed"):
        bucket.download("x.bin", tmp_path / "x", size=stale.size, etag=stale.etag)


def test_throttling_is_transient_and_quick(s3_endpoint, s3_bucket):
    """SlowDown (503) comes back as TransientStoreError within the library's short retries."""
    bucket = store.open_store(s3_bucket)
    s3_endpoint.fault(30, status=503, code="SlowDown")
    started = time.monotonic()
    try:
        with pytest.raises(store.TransientStoreError, match="SlowDown"):
            bucket.list()
    finally:
        s3_endpoint.fault(0)
    assert time.monotonic() - started < 12  # store_cloud.RETRIES: 2 retries, 10 s at most


def test_bundle_index_names_every_shard_and_its_size(tmp_path):
    """The pure-Python index reader agrees with TF's: a checkpoint saved across two devices
    has two data shards, each exactly as long as its last tensor's end."""
    from shared.tfcompat import tf, v1

    graph = tf.Graph()
    with graph.as_default():
        with tf.device("/cpu:0"):
            a = v1.get_variable("a", initializer=tf.ones([100], tf.float32))
        with tf.device("/cpu:1"):
            b = v1.get_variable("b", initializer=tf.ones([7, 3], tf.float64))
        saver = v1.train.Saver([a, b], sharded=True)
        config = v1.ConfigProto(device_count={"CPU": 2})
        with v1.Session(graph=graph, config=config) as session:
            session.run(v1.global_variables_initializer())
            prefix = saver.save(session, str(tmp_path / "ckpt"), write_meta_graph=False)
    sizes = bundle_index.required_sizes(Path(f"{prefix}.index").read_bytes())
    on_disk = {p.name.split(".", 1)[1]: p.stat().st_size for p in tmp_path.glob("ckpt.data-*")}
    assert len(sizes) == 2
    assert {f"data-{name.split('data-')[1]}": size for name, size in sizes.items()} == on_disk
    assert sorted(on_disk.values()) == [168, 400]  # 7x3 float64, 100 float32
    with pytest.raises(bundle_index.BundleIndexError):
        bundle_index.required_sizes(b"\0" * 100)


def test_publish_fetch_round_trip_and_pointer(s3_endpoint, saved_models, tmp_path):
    """Our writer's version is complete at once (its manifest), fetched byte for byte; the
    pointer changes at each commit and a poll of an unchanged one is one request."""
    base = store.open_store(make_bucket(s3_endpoint.url) + "/m/savedmodels")
    with pytest.raises(store.ObjectMissing):
        remote.read_pointer(base)
    local = layout.savedmodel_path(saved_models, 10)
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

    remote.publish(base, 20, layout.savedmodel_path(saved_models, 20))
    assert remote.read_pointer(base, pointer.etag).versions == (10, 20)


def test_upload_order_puts_the_graph_after_the_variables():
    order = upload_order(
        ["saved_model.pb", "commit.json", "variables/variables.index", "zz-extra.json",
         "variables/variables.data-00000-of-00001", "assets/vocab.txt"])
    assert order.index("variables/variables.data-00000-of-00001") < \
        order.index("variables/variables.index") < order.index("saved_model.pb")
    assert order[-1] == "saved_model.pb"


def test_a_damaged_file_fails_its_fetch_and_leaves_nothing(s3_endpoint, saved_models, tmp_path):
    base = store.open_store(make_bucket(s3_endpoint.url))
    remote.publish(base, 10, layout.savedmodel_path(saved_models, 10))
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
    local = layout.savedmodel_path(saved_models, 10)
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
    remote.publish(base, 10, layout.savedmodel_path(saved_models, 10))
    base.put(f"11/{remote.MANIFEST_NAME}", b" " * (remote.MANIFEST_LIMIT + 1))
    base.put(f"12/{remote.MANIFEST_NAME}", b'{"files": {"../../etc/passwd": {}}}')
    memory = remote.ScanMemory()
    assert [v.version for v in remote.complete_versions(base, memory)] == [10]
    assert "more than" in memory.incomplete[11]
    assert "not a manifest of ours" in memory.incomplete[12]


def test_a_retired_version_is_not_taken_while_its_files_go(s3_endpoint, saved_models):
    base = store.open_store(make_bucket(s3_endpoint.url))
    remote.publish(base, 10, layout.savedmodel_path(saved_models, 10))
    memory = remote.ScanMemory()
    assert [v.version for v in remote.complete_versions(base, memory)] == [10]
    base.delete(["10/" + remote.MANIFEST_NAME])  # retire's first step, and a crash after it
    for _ in range(2):
        assert remote.complete_versions(base, memory) == []
    remote.retire(base, 10)
    assert base.list() == [next(i for i in base.list() if i.key == remote.POINTER_NAME)]
    assert remote.read_pointer(base).versions == ()


def test_producer_publishes_to_a_bucket_through_an_outage(s3_endpoint, tmp_path):
    """``--export-dir s3://...``: versions committed locally, uploaded with the manifest last,
    the bucket's retention as the local one; a throttled store at the start is logged once,
    retried, and training goes on."""
    url = make_bucket(s3_endpoint.url) + "/linear"
    s3_endpoint.fault(60, status=503, code="SlowDown")  # until the producer has met it

    def on_event(event: dict) -> None:
        if event["event"] == "upload_failed":
            s3_endpoint.fault(0)

    producer = warm("producer", "--log-format", "json", "--export-dir", url,
                    "--staging-dir", tmp_path / "staging", "--steps", 400,
                    "--export-every", 100, "--checkpoint-every", 100, "--keep-exports", 2,
                    on_event=on_event)
    try:
        assert producer.wait(120) == 0, producer.stderr
    finally:
        s3_endpoint.fault(0)
    assert len(producer.named("upload_failed")) == 1
    assert len(producer.named("upload_recovered")) == 1
    assert producer.named("training_finished")[0]["step"] == 400
    base = store.open_store(url).child("savedmodels")
    assert remote.committed_versions(base) == [300, 400]
    assert remote.read_pointer(base).versions == (300, 400)
    assert [v.version for v in remote.complete_versions(base)] == [300, 400]
    assert store.open_store(url).get("export.json").data == b'{"model": "linear"}'
    assert [v.step for v in layout.savedmodel_versions(tmp_path / "staging")] == [300, 400]


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
