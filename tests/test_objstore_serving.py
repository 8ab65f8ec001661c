"""Model servers and consumers reading an object store (issue 29, part 2): a real S3 endpoint
(moto's server, ``tests.objstore``) on 127.0.0.1 reached through a TCP relay the tests can stop
(``tests.tcp_proxy``: a store that goes down and comes back with its objects), real server
processes, real HTTP clients, boto3 as the other tool that uploads versions.

TF Serving polls a base path every ``--file_system_poll_wait_seconds`` (1 s by default; 0 polls
once, less never: tensorflow_serving/sources/storage_path/file_system_storage_path_source.proto,
``file_system_poll_wait_seconds``) and reads ``s3://``/``gs://`` through TF's filesystems, which
TF 2.21 no longer has; what a version becomes visible as there is whatever the listing shows,
half-uploaded or not (tensorflow/serving#1086). Here a version is served only once complete.

``MIRROR_CHAOS_VERSIONS`` (default 6; 50 in ``make soak``-style runs) sets the chaos run's count.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from harness.processes import Process, env, free_ports
from harness.rest_client import RestClient
from tests import objstore, tfs_models
from tests.helpers import fork_server
from tests.mirror_helpers import SHARD, Asker, upload_other_tool
from tests.objstore import s3_endpoint  # noqa: F401 - the session's S3 endpoint fixture
from tests.tcp_proxy import Proxy

CHAOS_VERSIONS = int(os.environ.get("MIRROR_CHAOS_VERSIONS", "6"))
LIVE_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def proxy(s3_endpoint):  # noqa: F811
    relay = Proxy(int(s3_endpoint.url.rsplit(":", 1)[1])).start()
    yield relay
    relay.stop()


class RelayedForks:
    """The session's warm fork servers (``tests.helpers.warm``), each child given an environment
    that points the SDKs at the relay: ``Process(..., server=RelayedForks(...))``."""

    modules = ("consumer.model_server", "consumer", "producer")

    def __init__(self, url: str) -> None:
        self.environ = {**env(), **objstore.TEST_CREDENTIALS, "AWS_ENDPOINT_URL_S3": url,
                        "AWS_ALLOW_HTTP": "true"}

    def spawn(self, module: str, argv: list[str], cwd=None, environ=None):
        return fork_server(module).spawn(module, argv, cwd, environ or self.environ)


@pytest.fixture(scope="module")
def forks(proxy):
    """Servers and consumers forked warm, reaching the store through the relay."""
    return RelayedForks(proxy.url)


@pytest.fixture(scope="module")
def s3(s3_endpoint):  # noqa: F811
    return objstore.client(s3_endpoint.url)


@pytest.fixture(scope="module")
def hp():
    versions = tfs_models.HalfPlusTwo()
    yield versions
    versions.close()


def bucket_of(url: str) -> str:
    return url[len("s3://"):]


def serve(forks: RelayedForks, base: str, work: Path, *args) -> tuple[Process, int]:
    rest, grpc = free_ports(2)
    server = Process("consumer.model_server", f"--rest_api_port={rest}", f"--port={grpc}",
                     "--model_name=hp", f"--model_base_path={base}", f"--work_dir={work}",
                     *args, server=forks)
    server.wait_for(lambda e: e["event"] == "serving", timeout=60)
    return server, rest


def live(server: Process, step: int, timeout: float = LIVE_TIMEOUT) -> dict:
    return server.wait_seen(lambda e: e["event"] == "model_loaded" and e["step"] == step,
                            timeout=timeout)


def no_partial_loads(server: Process, complete: set[int]) -> None:
    """Every load was of a complete version, and none failed (a partial one would)."""
    assert not server.named("load_failed"), server.named("load_failed")[:3]
    assert not server.named("load_crashed"), server.named("load_crashed")[:3]
    loaded = {e["step"] for e in server.named("model_loaded")}
    assert loaded <= complete, loaded - complete


def our_writer(url: str):
    from shared import store

    return store.open_store(url)


# -- our writer: servers and an evaluating consumer take every version -----------------------


def test_three_servers_and_an_evaluating_consumer_take_every_version(forks, tmp_path, hp,
                                                                     s3_endpoint):  # noqa: F811
    """Our writer publishes (manifest last, then the pointer): the producer trains into
    ``--export-dir s3://...``, and ``shared.remote.publish`` writes half_plus_two versions.
    Three model servers on the bucket take every version, answering as from a local dir; an
    evaluating consumer on the bucket evaluates each version as one on the producer's local
    staging dir does; ``python -m consumer --mode serve`` on the bucket serves it under the
    name in its export.json. Each version's spread between the first and last server is
    recorded."""
    from shared import remote

    bucket = objstore.make_bucket(s3_endpoint.url)
    base = our_writer(f"{bucket}/hp")
    staging = tmp_path / "staging"
    producer = Process("producer", f"--export-dir={bucket}/exp", f"--staging-dir={staging}",
                       "--steps=1000", "--export-every=500", "--checkpoint-every=500",
                       "--log-format=json", server=forks)
    servers = [serve(forks, f"{bucket}/hp", tmp_path / f"work{i}") for i in range(3)]
    consumers = [Process("consumer", "--mode", "evaluate", f"--export-dir={d}",
                         f"--work-dir={tmp_path / name}", "--until-step=1000",
                         "--log-format=json", server=forks)
                 for name, d in (("c_remote", f"{bucket}/exp"), ("c_local", staging))]
    serving = Process("consumer", "--mode", "serve", f"--export-dir={bucket}/exp", "--port=0",
                      "--grpc-port=0", f"--work-dir={tmp_path / 's_remote'}",
                      "--log-format=json", server=forks)  # named by the bucket's export.json
    spreads = []

    def publish(step: int) -> None:
        hp.save(tmp_path / "hp" / str(step), b=float(step))
        remote.publish(base, step, tmp_path / "hp" / str(step))
        ready = [live(server, step)["ready_at"] for server, _ in servers]
        spreads.append(max(ready) - min(ready))

    try:
        publish(1)
        with Asker(servers[0][1], "hp") as asker:  # from the first version on: none fails
            publish(2)
            asker.wait_for_version(2)
        assert producer.wait(120) == 0, producer.stderr[-2000:]
        for consumer in consumers:
            assert consumer.wait(LIVE_TIMEOUT) == 0, consumer.stderr[-2000:]
        assert not asker.failures, asker.failures[:5]
        assert asker.versions[-1] == 2
        port = serving.wait_seen(lambda e: e["event"] == "serving")["port"]
        serving.wait_seen(lambda e: e["event"] == "model_loaded" and e["step"] == 1000)
        time.sleep(1.0)  # the last LIST of the last version's upload is behind us
        s3_endpoint.reset()  # idle: each of the 4 mirrors left asks one conditional GET a poll
        time.sleep(2.0)
        idle = s3_endpoint.requests()["total"]
        status, headers, _ = RestClient(port).call("GET", "/v1/models/linear")
        assert status == 200, "python -m consumer --mode serve on a bucket"
    finally:
        for process in [producer] + consumers + [serving] + [s for s, _ in servers]:
            process.terminate()
    print(f"\nspread of model_loaded across 3 servers, per version (s): "
          f"{[round(s, 3) for s in spreads]}; idle: {idle} requests in 2 s from 4 mirrors")
    assert idle <= 4 * 3, idle  # no LIST while the pointer is unchanged
    assert max(spreads) < 3.0, spreads  # each polls on its own, once a second
    evaluations = [{e["step"]: {k: v for k, v in e.items() if isinstance(v, float)}
                    for e in c.named("evaluated")} for c in consumers]  # the metrics
    common = evaluations[0].keys() & evaluations[1].keys()  # latest(1) may skip 500 on one
    assert 1000 in common and evaluations[0][1000] and \
        all(evaluations[0][s] == evaluations[1][s] for s in common), evaluations
    for server, _ in servers:
        no_partial_loads(server, {1, 2})
        figures = server.wait_seen(lambda e: e["event"] == "mirror_stopped", timeout=10)
        assert figures["polls"] - figures["lists"] >= 2, figures  # unchanged pointer: no LIST
        assert not server.named("store_unavailable")
    cache = Path(servers[0][0].named("model_loaded")[-1]["path"]).parent
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == ["2"], \
        "versions neither wanted nor live are evicted from the cache"


# -- another tool: random order, uploads stopped, shards truncated ---------------------------


def test_chaos_of_another_tools_uploads_loads_only_complete_versions(forks, tmp_path, hp, s3,
                                                                     s3_endpoint):  # noqa: F811
    """Versions uploaded by boto3 file by file in random order, some stopped part way, some
    with their data shard cut short, while a client asks every 50 ms: no partial version is
    ever loaded, no request fails, each answer matches the version it names, and the last
    complete version goes live."""
    from shared import remote

    rng = random.Random(29)
    bucket = bucket_of(objstore.make_bucket(s3_endpoint.url))
    count = CHAOS_VERSIONS
    stopped = set(rng.sample(range(2, count + 1), max(1, count // 5)))
    truncated = set(rng.sample(sorted(set(range(2, count + 1)) - stopped), max(1, count // 10)))
    local = tmp_path / "versions"
    hp.save(local / "1", b=1.0)
    upload_other_tool(s3, bucket, "m", 1, local / "1", rng=rng)
    config = tmp_path / "models.config"  # a config file's base_path on s3:// too
    config.write_text('model_config_list { config { name: "hp" base_path: "s3://%s/m" '
                      'model_platform: "tensorflow" model_version_policy { latest { '
                      'num_versions: 1 } } } }\n' % bucket)
    server, port = serve(forks, f"s3://{bucket}/m", tmp_path / "work",
                         f"--model_config_file={config}")
    live(server, 1)
    complete = {1}
    with Asker(port, "hp") as asker:
        for step in range(2, count + 1):
            hp.save(local / str(step), b=float(step))
            files = len(list((local / str(step)).rglob("*.*")))
            upload_other_tool(s3, bucket, "m", step, local / str(step), rng=rng,
                              stop_after=rng.randrange(files) if step in stopped else None,
                              truncate_shard=step in truncated)
            if step not in stopped | truncated:
                complete.add(step)
            if step % 3 == 0:  # a few versions seen on their way, others may be skipped
                time.sleep(0.3)
        last = max(complete)
        live(server, last, timeout=LIVE_TIMEOUT)
        # ours, but a file's bytes differ from its manifest's sha256 (same size): each try
        # fails its check, tried again after a back-off (2 s, 4 s...), never in a loop
        bad = count + 1
        hp.save(local / str(bad), b=float(bad))
        remote.publish(our_writer(f"s3://{bucket}/m"), bad, local / str(bad))
        shard = (local / str(bad) / SHARD).read_bytes()
        s3.put_object(Bucket=bucket, Key=f"m/{bad}/{SHARD}", Body=bytes(len(shard)))
        server.wait_for(lambda e: e["event"] == "download_failed" and e["step"] == bad,
                        timeout=LIVE_TIMEOUT)
        time.sleep(3.0)
    assert server.terminate() == 0, server.stderr[-2000:]
    tries = [e for e in server.named("download_failed") if e["step"] == bad]
    assert 1 <= len(tries) <= 2, tries  # in ~3 s: the first try and at most one more
    assert asker.versions[-1] == last  # the broken one never served
    assert not asker.failures, asker.failures[:5]
    assert asker.versions == sorted(asker.versions) and asker.versions[-1] == last
    no_partial_loads(server, complete)
    for step in truncated:  # proven incomplete from the index, never downloaded
        assert not any(e["step"] == step for e in server.named("version_mirrored"))
    print(f"\nchaos: {count} versions, {len(stopped)} stopped, {len(truncated)} truncated, "
          f"{asker.asked} requests, loaded {[e['step'] for e in server.named('model_loaded')]}")


# -- the store down, and throttling ----------------------------------------------------------


def test_store_down_then_throttling_under_load(forks, tmp_path, hp, proxy,
                                               s3_endpoint):  # noqa: F811
    """The store unreachable for 10 s (the relay stopped: connections refused and cut), then
    throttling (503 SlowDown) for 2 s, while a client asks every 50 ms: no request fails, each
    condition is logged once when it starts and once when it clears, and a version committed
    while the store was down is live within one poll (1 s) plus its download and load after
    the store returns."""
    from shared import remote

    bucket = objstore.make_bucket(s3_endpoint.url)
    base = our_writer(f"{bucket}/hp")
    hp.save(tmp_path / "v" / "1", b=1.0)
    remote.publish(base, 1, tmp_path / "v" / "1")
    server, port = serve(forks, f"{bucket}/hp", tmp_path / "work")
    live(server, 1)
    with Asker(port, "hp") as asker:
        proxy.stop()
        server.wait_for(lambda e: e["event"] == "store_unavailable", timeout=10)
        hp.save(tmp_path / "v" / "2", b=2.0)
        remote.publish(base, 2, tmp_path / "v" / "2")  # straight to the store: ours is down
        time.sleep(10)
        proxy.start()
        back = time.time()
        loaded = live(server, 2, timeout=LIVE_TIMEOUT)
        took = loaded["ready_at"] - back
        s3_endpoint.fault(2.0, 503, "SlowDown")
        server.wait_for(lambda e: e["event"] == "store_unavailable" and e["throttled"],
                        timeout=10)
        server.wait_for(lambda e: e["event"] == "store_recovered", timeout=40)
    assert server.terminate() == 0, server.stderr[-2000:]
    assert not asker.failures, asker.failures[:5]
    print(f"\nstore back -> version 2 live: {took:.3f} s; {asker.asked} requests, none failed")
    assert took < 1.0 + 5.0, took  # one poll, plus the download and load on a loaded machine
    downs = server.named("store_unavailable")
    assert len(downs) == 2 and [d["throttled"] for d in downs] == [False, True], downs
    assert len(server.named("store_recovered")) == 2


# -- a full cache disk -----------------------------------------------------------------------


def test_a_full_cache_disk_is_logged_once_and_the_live_version_answers(forks, tmp_path, hp,
                                                                       s3_endpoint):  # noqa
    """The work dir (the cache) on a 96 MiB tmpfs (fetch keeps 64 MiB free), filled by another
    file after version 1 is live: version 2 cannot be copied; ``cache_full`` is logged once, version 1 keeps
    answering, and once space is freed version 2 goes live and ``cache_full_cleared`` says so."""
    from shared import remote

    work = tmp_path / "small"
    work.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(work)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        bucket = objstore.make_bucket(s3_endpoint.url)
        base = our_writer(f"{bucket}/hp")
        hp.save(tmp_path / "v" / "1", b=1.0)
        remote.publish(base, 1, tmp_path / "v" / "1")
        config = tmp_path / "models.config"  # a policy and a label on a bucket's versions
        config.write_text('model_config_list { config { name: "hp" base_path: "%s/hp" '
                          'model_platform: "tensorflow" model_version_policy { specific { '
                          'versions: 1 versions: 2 } } version_labels { key: "stable" '
                          'value: 1 } } }\n' % bucket)
        server, port = serve(forks, f"{bucket}/hp", work / "w", f"--model_config_file={config}")
        live(server, 1)
        filler = work / "filler"
        with open(filler, "wb") as out:  # everything but a few KiB
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError:
                pass
        with Asker(port, "hp") as asker:
            hp.save(tmp_path / "v" / "2", b=2.0)
            remote.publish(base, 2, tmp_path / "v" / "2")
            server.wait_for(lambda e: e["event"] == "cache_full", timeout=10)
            time.sleep(2.5)  # more polls: not logged again
            filler.unlink()
            freed = time.time()
            took = live(server, 2)["ready_at"] - freed
            server.wait_seen(lambda e: e["event"] == "cache_full_cleared", timeout=5)
            asker.wait_for_version(2)
            labelled = RestClient(port).predict("hp/labels/stable", {"instances": [1.0]})
        assert server.terminate() == 0, server.stderr[-2000:]
        assert not asker.failures, asker.failures[:5]
        assert 1 in asker.versions and asker.versions[-1] == 2
        assert len(server.named("cache_full")) == 1
        assert labelled[0] == 200 and labelled[1]["x-model-version"] == "1", labelled
        print(f"\nspace freed -> version 2 live: {took:.3f} s")
    finally:
        subprocess.run(["umount", "-l", str(work)], capture_output=True)


# -- flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, error", [
    (["--model_base_path=hdfs://nn/models/m"], "hdfs:// is not supported"),
    (["--model_base_path=s3://"], "names no bucket"),
])
def test_base_paths_on_schemes_we_cannot_read_are_refused(forks, argv, error):
    process = Process("consumer.model_server", *argv, server=forks)
    assert process.wait(60) == 2
    assert error in process.stderr


def test_a_consumer_on_a_bucket_reads_savedmodels_only(forks, tmp_path):
    process = Process("consumer", "--export-dir=s3://b/p", "--source=checkpoint",
                      f"--work-dir={tmp_path}", server=forks)
    assert process.wait(60) == 2
    assert "--source savedmodel" in process.stderr
