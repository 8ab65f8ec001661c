"""Faults made real: a full disk is a file-size limit on a real child process (its writes get
EFBIG, as they would ENOSPC), a second writer is a second real process."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal

import pytest
import structlog

from shared import commit, dirlock, layout
from tests.helpers import Process, run

FULL = 10_000  # bytes a file may grow to: less than any .meta or saved_model.pb of ours


def disk_full_at(limit: int):
    """A preexec_fn: the child may write files of up to ``limit`` bytes (raisable later)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def set_disk_limit(pid: int, limit: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def committed(root) -> dict[str, bytes]:
    """Every committed version's files and their bytes."""
    files = {}
    for name in layout.read_checkpoint_state(root):
        for path in layout.checkpoints_dir(root).glob(f"{name}.*"):
            files[str(path)] = path.read_bytes()
    for version in layout.savedmodel_versions(root):
        for path in version.path.rglob("*"):
            if path.is_file():
                files[str(path)] = path.read_bytes()
    return files


def leftovers(root) -> list[str]:
    """What a failed publish could leave: staging dirs, TF temp files, uncommitted checkpoints."""
    listed = set(layout.read_checkpoint_state(root))
    found = [p for p in layout.savedmodels_dir(root).iterdir() if p.name.startswith(".tmp-")]
    for path in layout.checkpoints_dir(root).iterdir():
        prefix = re.match(r"model\.ckpt-[0-9]+", path.name)
        if path.name != "checkpoint" and (prefix is None or prefix.group() not in listed
                                          or path.is_dir() or ".tmp" in path.name):
            found.append(path)
    return sorted(map(str, found))


def test_a_full_disk_fails_publishes_not_training_and_the_run_completes_when_space_returns(
        tmp_path):
    root = tmp_path / "exports"
    producer = Process("producer", "--export-dir", root, "--steps", 10**9, "--checkpoint-every",
                       100, "--export-every", 200, "--max-publish-failures", 10**6,
                       "--log-every", 10**6)
    try:
        producer.wait_for(lambda e: e["event"] == "model_exported")
        set_disk_limit(producer.popen.pid, FULL)
        failed = {"checkpoint": 0, "savedmodel": 0}

        def failures(event):
            if event["event"] == "publish_failed":
                failed[event["kind"]] += 1
            return min(failed.values()) >= 2

        producer.wait_for(failures, timeout=60)  # the disk is full for good now
        before = committed(root)
        failed.update(checkpoint=0, savedmodel=0)
        last_failure = producer.wait_for(failures, timeout=60)
        assert committed(root) == before  # every committed version is as it was
        assert "File too large" in last_failure["error"]

        set_disk_limit(producer.popen.pid, resource.RLIM_INFINITY)  # space comes back
        saved = producer.wait_for(lambda e: e["event"] == "checkpoint_saved", timeout=60)
        producer.wait_for(lambda e: e["event"] == "model_exported", timeout=60)
        assert saved["step"] > last_failure["step"]  # it trained on through the failures
        producer.popen.send_signal(signal.SIGTERM)
        assert producer.wait() == 0, producer.stderr
    finally:
        producer.kill()
    finished = producer.named("training_finished")[-1]
    assert finished["step"] == layout.latest_checkpoint(root).step
    assert finished["step"] == layout.latest_savedmodel(root).step
    assert leftovers(root) == []  # each failed publish removed what it had staged
    assert "Traceback" not in producer.stderr


@pytest.mark.parametrize("args, message", [
    (["--steps", 10**9, "--checkpoint-every", 50, "--max-publish-failures", 2],
     "2 publish failure(s) in a row"),
    (["--steps", 60, "--checkpoint-every", 50, "--export-every", 1000],
     "at the final publish"),
], ids=["in_a_row", "final"])
def test_a_disk_that_stays_full_ends_the_run_with_one_line(args, message, tmp_path):
    root = tmp_path / "exports"
    result = run("producer", "--export-dir", root, *args, preexec_fn=disk_full_at(FULL),
                 timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "could not be written" in result.stderr and "File too large" in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {e["kind"] for e in events if e["event"] == "publish_failed"} == {"checkpoint"}
    assert not layout.has_versions(root) and leftovers(root) == []


def _copy_savedmodel(source_root, step, root):
    commit.claim(root, "linear")
    staging = commit.staging_dir(root, step)
    shutil.copytree(layout.savedmodel_path(source_root, step), staging, dirs_exist_ok=True)
    commit.commit_dir(staging, layout.savedmodel_path(root, step))


def test_the_consumer_on_a_full_disk_logs_and_carries_on_then_gives_up(tmp_path, linear_export):
    """Train mode's publishes fail and are counted; evaluate mode's record is only logged."""
    root, work, evaluations = tmp_path / "exports", tmp_path / "work", tmp_path / "evaluating"
    _copy_savedmodel(linear_export.root, 1000, root)
    evaluations.mkdir()
    history = evaluations / "evaluations.jsonl"
    history.write_text('{"step": 0}\n' * 1000)  # over the limit already: no append can fit
    evaluator = Process("consumer", "--export-dir", root, "--work-dir", evaluations,
                        "--until-step", 1000, preexec_fn=disk_full_at(FULL))
    trainer = Process("consumer", "--export-dir", root, "--work-dir", work, "--mode", "train",
                      "--train-steps", 5, "--max-publish-failures", 2,
                      preexec_fn=disk_full_at(FULL))
    try:
        first = trainer.wait_for(lambda e: e["event"] == "publish_failed", timeout=60)
        _copy_savedmodel(linear_export.root, 1500, root)
        assert trainer.wait(timeout=60) == 1, trainer.stderr
        assert evaluator.wait(timeout=60) == 0, evaluator.stderr
    finally:
        trainer.kill()
        evaluator.kill()
    assert first["kind"] == "checkpoint" and "File too large" in first["error"]
    assert trainer.stderr.count("\n") == 1, trainer.stderr
    assert "2 publish failures in a row" in trainer.stderr
    assert [e["start_step"] for e in trainer.named("trained")] == [1000, 1500]
    assert not layout.has_versions(work) and leftovers(work) == []

    [refused] = evaluator.named("record_failed")  # 1000 or 1500, whichever it found first
    assert "File too large" in refused["error"]
    assert [e["step"] for e in evaluator.named("evaluated")] == [refused["step"]]
    assert history.read_text() == '{"step": 0}\n' * 1000  # no torn line appended


def test_one_writer_per_directory_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    root = tmp_path / "exports"
    first = Process("producer", "--export-dir", root, "--steps", 10**9)
    try:
        first.wait_for(lambda e: e["event"] == "training_started")
        second = run("producer", "--export-dir", root, "--steps", 10, timeout=60)
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1
        assert f"in use by producer pid {first.popen.pid}" in second.stderr
        first.popen.kill()  # -9: the kernel drops the lock with the process
        first.wait()
    finally:
        first.kill()
    again = run("producer", "--export-dir", root, "--steps", 10, timeout=120)
    assert again.returncode == 0, again.stderr


def test_the_train_mode_consumer_holds_its_work_dir(tmp_path):
    """Here this test process is the holder; the consumer refuses before TensorFlow loads."""
    work = tmp_path / "work"
    work.mkdir()
    dirlock.hold(work, "another consumer")
    try:
        result = run("consumer", "--export-dir", tmp_path / "exports", "--work-dir", work,
                     "--mode", "train", timeout=60)
    finally:
        dirlock.release(work)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert f"in use by another consumer pid {os.getpid()}" in result.stderr


def _edit_serve_meta_graph(savedmodel, edit) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    model.ParseFromString((savedmodel / "saved_model.pb").read_bytes())
    edit(next(m for m in model.meta_graphs if "serve" in m.meta_info_def.tags))
    (savedmodel / "saved_model.pb").write_bytes(model.SerializeToString())


def _ask_for_a_huge_dataset(meta_graph) -> None:
    spec = {"name": "random_classes", "seed": 2, "num_batches": 500_000}  # 1.9 GB
    meta_graph.collection_def["dataset"].bytes_list.value[0] = json.dumps(spec).encode()


def _point_the_asset_outside(meta_graph) -> None:
    from tensorflow.core.protobuf import meta_graph_pb2

    for packed in meta_graph.collection_def["saved_model_assets"].any_list.value:
        asset = meta_graph_pb2.AssetFileDef()
        packed.Unpack(asset)
        asset.filename = "../../../../outside.txt"
        packed.Pack(asset)


def test_hostile_exports_are_refused_before_they_cost_anything(tmp_path, mlp_export):
    """Each is a load_failed with its reason; the live version stays; memory stays flat."""
    from consumer import loader
    from consumer.loop import Config
    from tests.test_consumer import Running
    from shared import contract

    source = layout.latest_savedmodel(mlp_export.root).path
    root, outside = tmp_path / "exports", tmp_path / "outside"
    outside.mkdir()
    (outside / "outside.txt").write_text("not yours\n" * 5)
    commit.claim(root, "mlp")

    def publish_copy(step, alter=None):
        staging = commit.staging_dir(root, step)
        shutil.copytree(source, staging, dirs_exist_ok=True)
        if alter:
            alter(staging)
        staging.rename(layout.savedmodel_path(root, step))

    def link_the_graph_outside(path):
        shutil.move(path / "saved_model.pb", outside / "saved_model.pb")
        (path / "saved_model.pb").symlink_to(outside / "saved_model.pb")

    hostile = {
        1100: (lambda p: _edit_serve_meta_graph(p, _ask_for_a_huge_dataset), "over the limit"),
        1200: (lambda p: os.truncate(p / "saved_model.pb", contract.MAX_GRAPH_BYTES + 1),
               "over the limit of 256 MiB"),
        1300: (link_the_graph_outside, "is a symlink"),
        1400: (lambda p: _edit_serve_meta_graph(p, _point_the_asset_outside),
               "lies outside its SavedModel"),
    }
    publish_copy(1000)
    running = Running(Config(export_dir=root, work_dir=tmp_path / "work", source="savedmodel",
                             mode=loader.EVALUATE))
    try:
        running.wait_loaded(1000)
        rss = _rss_mb()
        with structlog.testing.capture_logs() as events:
            for step, (alter, _) in hostile.items():
                publish_copy(step, alter)
                running.wait_until(lambda: str(layout.savedmodel_path(root, step))
                                   in running.consumer.stats.failed, what=f"{step} refused")
                assert running.consumer.live.version.step == 1000  # the live version stays
            (layout.savedmodels_dir(root) / "1450").symlink_to(source)  # a linked version name
            publish_copy(1500)
            running.wait_loaded(1500)
        grown = _rss_mb() - rss
    finally:
        running.close()
    failed = {e["step"]: e["error"] for e in events if e["event"] == "load_failed"}
    assert set(failed) == set(hostile)
    for step, (_, reason) in hostile.items():
        assert reason in failed[step], failed[step]
    assert running.consumer.stats.loaded == [1000, 1500]  # 1450, a symlink, is never a version
    assert grown < 50, grown  # the huge dataset was never built, the big graph never read


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")

