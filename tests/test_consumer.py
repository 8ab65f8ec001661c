"""The consumer's parts in this process: real TensorFlow, real files, a real watchdog observer."""

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import structlog

from consumer import evaluate, loader
from consumer.loop import Config, Consumer
from shared import commit, contract, datasets, layout
from tests.helpers import REPO, run


def _copy_version(source_root, step, target_root, kind="savedmodel"):
    """Publish a copy of one version into another export dir, committed the way the producer does."""
    commit.claim(target_root, "linear")
    if kind == "savedmodel":
        staging = commit.staging_dir(target_root, step)
        shutil.copytree(layout.savedmodel_path(source_root, step), staging, dirs_exist_ok=True)
        commit.commit_dir(staging, layout.savedmodel_path(target_root, step))
        return
    for path in layout.checkpoints_dir(source_root).glob(f"model.ckpt-{step}.*"):
        shutil.copy(path, layout.checkpoints_dir(target_root))
    entries = layout.read_checkpoint_entries(target_root)
    commit.write_checkpoint_state(target_root, entries + [(f"model.ckpt-{step}", None)])


def _plant_broken(root, step, how):
    """Commit a broken SavedModel ``step``: built aside, then renamed in, like a real commit."""
    path = commit.staging_dir(root, step)
    path.rmdir()
    if how == "garbage":
        path.mkdir(parents=True)
        (path / "saved_model.pb").write_bytes(b"this is not a protobuf")
    elif how == "truncated":
        good = layout.latest_savedmodel(root).path
        shutil.copytree(good, path)
        data = (path / "saved_model.pb").read_bytes()
        (path / "saved_model.pb").write_bytes(data[: len(data) // 2])
    elif how == "no_variables":
        shutil.copytree(layout.latest_savedmodel(root).path, path)
        shutil.rmtree(path / "variables")
    path.rename(layout.savedmodel_path(root, step))
    return next(v for v in layout.savedmodel_versions(root) if v.step == step)


class Running:
    """A Consumer loop on a background thread, stopped and joined at the end of the test."""

    def __init__(self, config):
        self.stop = threading.Event()
        self.consumer = Consumer(config, self.stop)
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)
        self.thread.start()

    def wait_until(self, condition, timeout=30, what="condition"):
        import time
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not met in {timeout}s; stats: {self.consumer.stats}")
            time.sleep(0.01)

    def wait_loaded(self, step, timeout=30):
        self.wait_until(lambda: step in self.consumer.stats.loaded, timeout, f"step {step} loaded")

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("kind", ["savedmodel", "checkpoint"])
@pytest.mark.parametrize("purpose", [loader.EVALUATE, loader.TRAIN])
def test_loader_loads_each_kind_for_each_purpose(kind, purpose, mlp_export):
    version = layout.versions(mlp_export.root, kind)[-1]
    loaded = loader.load(version, purpose)
    try:
        assert loaded.dataset.name == "random_classes"
        uses_serve_tag = kind == "savedmodel" and purpose == loader.EVALUATE
        assert (loaded.serving is not None) == uses_serve_tag
        assert (loaded.training is not None) == (not uses_serve_tag)
        assert evaluate.evaluate(loaded)["accuracy"] > 0.3
    finally:
        loaded.close()


@pytest.mark.parametrize("how", ["garbage", "truncated", "no_variables"])
def test_broken_savedmodels_fail_with_load_error(how, tmp_path, linear_export):
    root = tmp_path / "exports"
    _copy_version(linear_export.root, 2000, root)
    broken = _plant_broken(root, 2500, how)
    with pytest.raises(loader.LoadError):
        loader.load(broken, loader.EVALUATE)


def test_checkpoint_missing_its_data_fails_with_load_error(tmp_path, linear_export):
    root = tmp_path / "exports"
    _copy_version(linear_export.root, 2000, root, kind="checkpoint")
    next(layout.checkpoints_dir(root).glob("model.ckpt-2000.data-*")).unlink()
    with pytest.raises(loader.LoadError, match="NotFoundError|DataLoss|not found"):
        loader.load(layout.latest_checkpoint(root), loader.TRAIN)


def test_savedmodel_and_checkpoint_evaluations_agree(mlp_export):
    checkpoint, savedmodel = (layout.latest_checkpoint(mlp_export.root),
                              layout.latest_savedmodel(mlp_export.root))
    assert checkpoint.step == savedmodel.step
    results = []
    for version in (checkpoint, savedmodel):
        loaded = loader.load(version, loader.EVALUATE)
        results.append(evaluate.evaluate(loaded))
        loaded.close()
    from_metrics, from_signature = results
    assert from_signature["accuracy"] == pytest.approx(from_metrics["accuracy"], abs=1e-6)
    assert from_signature["loss"] == pytest.approx(from_metrics["loss"], rel=1e-5)


def test_bad_version_keeps_the_live_one_and_the_next_good_one_is_taken(tmp_path, linear_export):
    root = tmp_path / "exports"
    _copy_version(linear_export.root, 1000, root)
    running = Running(Config(export_dir=root, work_dir=tmp_path / "work", source="savedmodel",
                             mode=loader.EVALUATE))
    try:
        running.wait_loaded(1000)
        live = running.consumer.live
        broken = _plant_broken(root, 1200, "truncated")
        _plant_broken(root, 9999, "garbage")  # a higher number must not block later versions
        _copy_version(linear_export.root, 1500, root)
        running.wait_loaded(1500)
        assert running.consumer.stats.loaded == [1000, 1500]
        assert str(layout.savedmodel_path(root, 9999)) in running.consumer.stats.failed
        # 1000 was dropped only after 1500 was ready, into another session of the same graph;
        # its own session is now the standby for the next version
        assert running.consumer.live.session is not live.session
        assert running.consumer.live.load == loader.WARM
        # (the old version is unloaded right after the new one is counted as loaded)
        running.wait_until(lambda: live.imported._idle == [live.session], 10,
                           "the old version's session back as the standby")
        assert not live.session._closed
        assert broken.step not in running.consumer.stats.loaded
    finally:
        running.close()
    lines = (tmp_path / "work" / "evaluations.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1000, 1500]


def test_rescan_catches_versions_the_observer_never_reported(tmp_path, linear_export):
    """A polling observer that never polls stands in for inotify's dropped events."""
    root = tmp_path / "exports"
    commit.claim(root, "linear")
    running = Running(Config(export_dir=root, work_dir=tmp_path / "work", source="checkpoint",
                             mode=loader.EVALUATE, poll=3600, rescan=0.3))
    try:
        # Commit only after the first scan has finished (and found nothing), so that nothing
        # but a later rescan can find this version.
        running.wait_until(lambda: running.consumer.source.scans >= 1)
        _copy_version(linear_export.root, 2000, root, kind="checkpoint")
        running.wait_loaded(2000, timeout=10)
        assert running.consumer.source.scans >= 2
    finally:
        running.close()


def test_the_consumer_cleans_what_a_crash_left_in_its_work_dir(tmp_path, linear_export):
    root, work = tmp_path / "exports", tmp_path / "work"
    _copy_version(linear_export.root, 1000, root)
    _copy_version(linear_export.root, 2000, work, kind="checkpoint")  # committed: kept
    staged = commit.staging_dir(work, 1100)
    (staged / "saved_model.pb").write_bytes(b"half")
    uncommitted = layout.checkpoints_dir(work) / "model.ckpt-2100.index"  # never committed
    uncommitted.write_bytes(b"half")
    with structlog.testing.capture_logs() as events:
        running = Running(Config(export_dir=root, work_dir=work, source="savedmodel",
                                 mode=loader.TRAIN, train_steps=1, until_step=1000))
        running.thread.join(timeout=60)
    removed = next(e for e in events if e["event"] == "leftovers_removed")
    assert sorted(removed["paths"]) == sorted([str(staged), str(uncommitted)])
    assert not staged.exists() and not uncommitted.exists()
    assert layout.checkpoint_is_complete(layout.checkpoint_prefix(work, 2000))


def test_the_watch_is_rearmed_when_the_export_dir_is_deleted_and_made_again(tmp_path,
                                                                            linear_export):
    """With the rescan an hour away, only a watch on the new directory can notice the commit."""
    root = tmp_path / "exports"
    _copy_version(linear_export.root, 1000, root)
    with structlog.testing.capture_logs() as events:
        running = Running(Config(export_dir=root, work_dir=tmp_path / "work",
                                 source="savedmodel", mode=loader.EVALUATE, rescan=3600))
        try:
            running.wait_loaded(1000)
            shutil.rmtree(root)
            running.wait_until(lambda: any(e["event"] == "watch_rearmed" for e in events))
            _copy_version(linear_export.root, 1500, root)
            running.wait_loaded(1500, timeout=10)
        finally:
            running.close()
    assert [e["step"] for e in events if e["event"] == "model_loaded"] == [1000, 1500]


def test_a_model_nobody_here_wrote_works_through_the_contract(tmp_path):
    """A graph built by hand, with other names and optimizer, saved by a vanilla Saver."""
    from shared.tfcompat import tf, v1

    data = datasets.load({"name": "linear", "seed": 3})
    root = tmp_path / "theirs"
    commit.claim(root, "theirs")
    graph = tf.Graph()
    with graph.as_default():
        step = v1.train.get_or_create_global_step()
        x = v1.placeholder(tf.float64, [None, 1], name="x_in")
        y = v1.placeholder(tf.float64, [None, 1], name="y_true")
        w = v1.get_variable("w", initializer=tf.constant([[0.5]], tf.float64))
        b = v1.get_variable("b", initializer=tf.constant([0.0], tf.float64))
        loss = tf.reduce_mean(tf.square(tf.matmul(x, w) + b - y), name="their/loss")
        train_op = v1.train.MomentumOptimizer(0.001, 0.9).minimize(loss, global_step=step)
        contract.attach_training(x, y, [loss], train_op, data)
        saver = v1.train.Saver()
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            saver.save(session, str(layout.checkpoint_prefix(root, 0)))
    version = layout.latest_checkpoint(root)
    loaded = loader.load(version, loader.TRAIN)
    try:
        from consumer import train
        before = evaluate.evaluate(loaded)["loss"]
        result = train.continue_training(loaded, 50, threading.Event())
        assert (result["start_step"], result["end_step"]) == (0, 50)
        assert evaluate.evaluate(loaded)["loss"] < before
    finally:
        loaded.close()


def test_training_continues_at_the_producers_accuracy_not_chance(mlp_export):
    """Seed 002: 35% before the handoff, 41% right after; never back to 20%."""
    from consumer import train

    before = mlp_export.named("train_progress")[-1]["accuracy"]
    loaded = loader.load(layout.latest_savedmodel(mlp_export.root), loader.TRAIN)
    try:
        result = train.continue_training(loaded, 50, threading.Event())
    finally:
        loaded.close()
    assert result["start_step"] == 10000 and result["end_step"] == 10050
    assert result["accuracy"] >= before - 0.02 and result["accuracy"] > 0.35


@pytest.mark.parametrize("args, message", [
    (["--export-dir", "{file}"], "export dir {file} is a file"),
    (["--export-dir", "{dir}/exports", "--work-dir", "{file}"], "work dir {file} is a file"),
    (["--mode", "evaluate", "--max-regression", "0.5"],
     "--max-regression belongs to --mode serve, not --mode evaluate"),
    (["--mode", "train", "--host", "0.0.0.0", "--port", "1", "--model-name", "m"],
     "--host, --port, --model-name belong to --mode serve, not --mode train"),
    (["--export-dir", "{dir}", "--work-dir", "{dir}"], "must differ"),
    (["--mode", "serve", "--source", "checkpoint"], "a checkpoint has no serving graph"),
    (["--mode", "predict"], "invalid choice"),
    (["--mode", "serve", "--port", "70000"], "port from 0 to 65535"),
    (["--poll", "0"], "must be > 0"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    (tmp_path / "file").write_text("keep")
    args = [a.format(file=tmp_path / "file", dir=tmp_path) for a in args]
    message = message.format(file=tmp_path / "file")
    if "--work-dir" not in args:
        args += ["--work-dir", str(tmp_path / "work")]
    result = run("consumer", *args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert (tmp_path / "file").read_text() == "keep"


def test_a_refused_version_at_until_step_ends_the_run_with_one_line(tmp_path, linear_export):
    """It used to wait forever for a version it had already seen and refused."""
    root = tmp_path / "exports"
    _copy_version(linear_export.root, 1000, root)
    _plant_broken(root, 1200, "truncated")
    result = run("consumer", "--export-dir", root, "--work-dir", tmp_path / "work",
                 "--until-step", "1100", timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "version 1200 (--until-step 1100) was refused" in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["step"] for e in events if e["event"] == "load_failed"] == [1200]
    assert events[-1]["event"] == "consumer_stopped"


def test_a_version_retired_while_loading_is_superseded_not_broken(tmp_path, linear_export):
    """Retention commits the new state file first, then deletes the old files one by one. A
    load that meets the half-deleted version fails, but the version left the listing: it was
    superseded, and must not be refused for good (it once was, as its .index was still there)."""
    root = tmp_path / "exports"
    _copy_version(linear_export.root, 2000, root, kind="checkpoint")
    version = layout.latest_checkpoint(root)
    for path in layout.checkpoints_dir(linear_export.root).glob("model.ckpt-2100.*"):
        shutil.copy(path, layout.checkpoints_dir(root))
    commit.write_checkpoint_state(root, [("model.ckpt-2100", None)])  # --keep-checkpoints 1
    Path(f"{version.path}.meta").unlink()  # retention is half-way: the .index is still there
    assert Path(f"{version.path}.index").exists()
    consumer = Consumer(Config(export_dir=root, work_dir=tmp_path / "work", source="checkpoint",
                               mode=loader.EVALUATE), threading.Event())
    with structlog.testing.capture_logs() as events:
        assert not consumer._load(version)
    assert consumer.refused == {} and consumer.live is None
    assert [e["deleted_while_loading"] for e in events if e["event"] == "load_failed"] == [True]

    # still listed and broken: refused (no retries in an export dir), not tried again
    commit.write_checkpoint_state(root, [("model.ckpt-2000", None), ("model.ckpt-2100", None)])
    Path(f"{version.path}.meta").write_bytes(b"broken")
    assert not consumer._load(version)
    assert consumer.retries.blocked(version)


@pytest.mark.parametrize("kind", ["checkpoint", "savedmodel"])
def test_an_idle_consumer_is_not_woken_by_its_own_reads(kind, tmp_path, linear_export):
    """Reading the state file raises inotify open/close events; they must not wake the source,
    or it rescans in a loop and burns a core while nothing happens. Idle, it scans on its
    timer only: three timed rescans come with no scan an event asked for."""
    root = tmp_path / "exports"
    _copy_version(linear_export.root, 2000, root, kind=kind)
    running = Running(Config(export_dir=root, work_dir=tmp_path / "work", source=kind,
                             mode=loader.EVALUATE, rescan=0.4))
    try:
        running.wait_loaded(2000)
        source = running.consumer.source
        scans, woken = source.scans, source.woken
        running.wait_until(lambda: source.scans - scans >= 3, what="three rescans")
        assert source.woken == woken
    finally:
        running.close()


@pytest.mark.parametrize("poll", [None, 0.2])
def test_a_state_file_rewritten_in_place_is_noticed_without_the_rescan(poll, tmp_path,
                                                                      linear_export):
    """Some writers rewrite the state file in place, and a file renamed into place under a
    reused inode number looks the same to a poller: a modification, not a creation."""
    root = tmp_path / "exports"
    _copy_version(linear_export.root, 1900, root, kind="checkpoint")
    running = Running(Config(export_dir=root, work_dir=tmp_path / "work", source="checkpoint",
                             mode=loader.EVALUATE, poll=poll, rescan=3600))
    try:
        running.wait_loaded(1900)
        for path in layout.checkpoints_dir(linear_export.root).glob("model.ckpt-2000.*"):
            shutil.copy(path, layout.checkpoints_dir(root))
        state = layout.state_file(root)
        inode = state.stat().st_ino
        with open(state, "r+") as handle:  # same file, same inode: only its content changes
            text = handle.read().replace("model.ckpt-1900", "model.ckpt-2000")
            handle.seek(0)
            handle.write(text)
            handle.truncate()
        assert state.stat().st_ino == inode
        running.wait_loaded(2000, timeout=10)
    finally:
        running.close()


def test_make_tensorboard_serves_training_and_evaluation_curves_side_by_side(tmp_path,
                                                                           linear_export):
    """The eval scalars land at each version's global step, under the training summaries' tag."""
    import json
    import os
    import signal
    import socket
    import time
    import urllib.request

    from tensorflow.python.summary.summary_iterator import summary_iterator

    root, work = tmp_path / "exports", tmp_path / "work"
    shutil.copytree(linear_export.root, root)
    running = Running(Config(export_dir=root, work_dir=work, source="checkpoint",
                             mode=loader.EVALUATE, until_step=2000))
    running.thread.join(timeout=60)
    evaluated = [v for e in summary_iterator(str(next((work / "eval").glob("events.*"))))
                 for v in e.summary.value]
    assert [v.tag for v in evaluated] == ["loss"]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["make", "-s", "tensorboard", f"EXPORT={root}", f"WORK={work}",
                               f"TB_PORT={port}"], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)

    def get(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                runs = get("/data/runs")
                if len(runs) == 2:
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "tensorboard never served both runs"
            time.sleep(0.5)
        train = get("/data/plugin/scalars/scalars?run=train/.&tag=loss")
        evaluation = get("/data/plugin/scalars/scalars?run=eval/.&tag=loss")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert sorted(runs) == ["eval/.", "train/."]
    assert len(train) > 1 and train[-1][1] <= 2000  # [wall time, step, value]
    assert [point[1] for point in evaluation] == [2000]
    recorded = json.loads((work / "evaluations.jsonl").read_text())
    assert evaluation[0][2] == pytest.approx(recorded["loss"], rel=1e-6)
