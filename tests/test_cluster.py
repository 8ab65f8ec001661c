"""The producer on TensorFlow's cluster runtime: real ps and worker processes on localhost, kill
-9 of each kind of task, and a consumer that takes the chief's exports in a single process."""

from __future__ import annotations

import json
import threading

import pytest

from consumer import evaluate, loader, train
from producer import cluster
from shared import commit, layout, models
from harness.processes import ForkServer, Process, local_cluster
from tests.helpers import run


@pytest.fixture(scope="module")
def warm():
    """The tasks start forked warm: TensorFlow's import, not the cluster, would fill the time."""
    server = ForkServer("producer")
    yield server
    server.close()


def start(warm: ForkServer, spec: str, job: str, task: int, *args) -> Process:
    return Process("producer", "--cluster", spec, "--job", job, "--task", task, *args,
                   server=warm)


def complete_versions_only(root) -> None:
    for name in layout.read_checkpoint_state(root):
        assert layout.checkpoint_is_complete(layout.checkpoints_dir(root) / name), name
    for version in layout.savedmodel_versions(root):
        assert layout.savedmodel_is_complete(version.path), version


def test_a_cluster_trains_in_any_start_order_survives_a_worker_and_its_exports_load_anywhere(
        tmp_path, warm):
    spec, root = local_cluster(workers=2), tmp_path / "exports"
    args = ("--export-dir", root, "--steps", 3000, "--checkpoint-every", 100,
            "--export-every", 500, "--log-every", 100)
    workers = [start(warm, spec, "worker", task, *args) for task in (0, 1)]  # before their ps
    ps = None
    try:
        for worker in workers:
            waiting = worker.wait_for(lambda e: e["event"] == "waiting_for_ps")
            assert waiting["ps"] == "ps/0"  # it says which task it waits for
        ps = start(warm, spec, "ps", 0)
        workers[1].wait_for(lambda e: e["event"] == "train_progress")
        workers[1].kill()  # -9, mid-training: the chief goes on alone
        assert workers[0].wait(timeout=120) == 0, workers[0].stderr
        assert ps.terminate() == 0, ps.stderr  # a ps serves until it is stopped
    finally:
        for process in [*workers, ps]:
            if process is not None:
                process.kill()
    assert workers[1].popen.returncode == -9
    finished = workers[0].named("training_finished")[-1]
    assert finished["step"] >= 3000 and finished["reason"] == "steps_reached"
    assert workers[0].named("train_progress")[-1]["loss"] < 0.003  # the line is learned

    complete_versions_only(root)
    checkpoint, savedmodel = layout.latest_checkpoint(root), layout.latest_savedmodel(root)
    assert "/job:ps/task:0" in (checkpoint.path.parent / f"{checkpoint.path.name}.meta"
                                ).read_text(errors="replace")
    assert b"/job:ps/task:0" in (savedmodel.path / "saved_model.pb").read_bytes()  # train tag
    # One process with no cluster: devices are cleared on import, in both load paths.
    for version in (checkpoint, savedmodel):
        for purpose in (loader.EVALUATE, loader.TRAIN):
            loaded = loader.load(version, purpose)
            try:
                assert evaluate.evaluate(loaded)["loss"] < 0.003
                if purpose == loader.TRAIN:
                    result = train.continue_training(loaded, 20, threading.Event())
                    assert result["end_step"] == version.step + 20
            finally:
                loaded.close()
                loaded.imported.retire()


def test_two_asynchronous_workers_learn_the_line_without_diverging(tmp_path, warm):
    """Each worker applies gradients computed on values the other has moved since. At the
    linear model's own rate, 0.02, stable alone, two workers diverged (loss 1e26 by step 4000)
    in 2 runs of 2; each worker's rate is now divided by their number."""
    spec, root = local_cluster(workers=2), tmp_path / "exports"
    args = ("--export-dir", root, "--steps", 4000, "--checkpoint-every", 1000,
            "--export-every", 1000, "--log-every", 10)
    tasks = [start(warm, spec, "ps", 0)] + [start(warm, spec, "worker", task, *args)
                                           for task in (0, 1)]
    ps, *workers = tasks
    try:
        for worker in workers:
            assert worker.wait(timeout=180) == 0, worker.stderr
        assert ps.terminate() == 0, ps.stderr
    finally:
        for task in tasks:
            task.kill()
    # The rate each worker's update ops took, as its session evaluated them with its feeds
    assert workers[0].named("training_started")[0]["learning_rate"] == pytest.approx(0.01)
    assert workers[1].named("worker_joined")[0]["learning_rate"] == pytest.approx(0.01)
    assert all(len(worker.named("train_progress")) >= 2 for worker in workers)  # both trained
    late = [e["loss"] for worker in workers for e in worker.named("train_progress")
            if e["step"] >= 1000]
    assert late and max(late) < 0.003, late  # the noise floor, 0.00235, and no excursion

    # The export keeps the model's own rate: a consumer that continues it alone, feeding only
    # features and labels, trains at 0.02, not at the half that suited two workers.
    for version in (layout.latest_checkpoint(root), layout.latest_savedmodel(root)):
        loaded = loader.load(version, loader.TRAIN)
        try:
            rates = models.applied_learning_rates(loaded.training.train_op)
            assert loaded.session.run(rates) == [pytest.approx(0.02)] * 2, version
        finally:
            loaded.close()
            loaded.imported.retire()


def test_the_chief_and_the_ps_killed_and_restarted_resume_from_the_newest_commit(tmp_path, warm):
    spec, root = local_cluster(workers=2), tmp_path / "exports"
    args = ("--export-dir", root, "--checkpoint-every", 100, "--export-every", 300,
            "--log-every", 100000, "--cluster-timeout", 20)
    ps = start(warm, spec, "ps", 0)
    chief = start(warm, spec, "worker", 0, *args, "--steps", 10**9)
    worker = start(warm, spec, "worker", 1, *args, "--steps", 10**9)
    lives = [ps, chief, worker]
    try:
        chief.wait_for(lambda e: e["event"] == "model_exported")
        chief.kill()  # -9 at some point of its saves
        newest = layout.latest_checkpoint(root).step
        complete_versions_only(root)
        lost = worker.wait_for(lambda e: e["event"] == "chief_lost")  # it waits for the chief
        chief = start(warm, spec, "worker", 0, *args, "--steps", 10**9)
        lives.append(chief)
        resumed = chief.wait_for(lambda e: e["event"] == "training_resumed")
        assert resumed["step"] == newest  # the committed checkpoint, not the ps's newer values
        back = worker.wait_for(lambda e: e["event"] == "chief_returned")
        assert back["paused_seconds"] > 0 and back["lost_at_step"] == lost["step"]
        chief.wait_for(lambda e: e["event"] == "checkpoint_saved")

        ps.kill()  # -9: the workers fail in one line, they do not hang
        for task in (chief, worker):
            assert task.wait(timeout=90) == 1, task.stderr
            # TF's C++ runtime may log its own gRPC errors above; ours is one line, and last
            ours = [line for line in task.stderr.splitlines() if line.startswith("producer:")]
            assert ours == [task.stderr.splitlines()[-1]], task.stderr
            assert "lost the cluster: ps/0" in ours[0] and "Traceback" not in task.stderr
        complete_versions_only(root)
        newest = layout.latest_checkpoint(root).step

        target = newest + 300
        lives += [start(warm, spec, "ps", 0),
                  start(warm, spec, "worker", 0, *args, "--steps", target),
                  start(warm, spec, "worker", 1, *args, "--steps", target)]
        ps, chief, worker = lives[-3:]
        assert chief.wait(timeout=120) == 0, chief.stderr
        assert worker.wait(timeout=60) == 0, worker.stderr
        assert ps.terminate() == 0
    finally:
        for process in lives:
            process.kill()
    assert chief.named("training_resumed")[0]["step"] == newest
    assert layout.latest_checkpoint(root).step >= target
    complete_versions_only(root)
    assert commit.clean_leftovers(root) == []


def test_a_worker_whose_chief_is_lost_stops_training_and_fails_when_it_does_not_come_back(
        tmp_path, warm):
    """Only the chief publishes. With it killed, the other worker trained on to --steps and
    exited 0 with "steps_reached", though no step past the chief's last commit was published."""
    spec, root = local_cluster(workers=2), tmp_path / "exports"
    args = ("--export-dir", root, "--steps", 5000, "--checkpoint-every", 100,
            "--export-every", 10**6, "--log-every", 10**6, "--cluster-timeout", 2)
    tasks = [start(warm, spec, "ps", 0)] + [start(warm, spec, "worker", task, *args)
                                           for task in (0, 1)]
    ps, chief, worker = tasks
    try:
        chief.wait_for(lambda e: e["event"] == "checkpoint_saved")
        chief.kill()
        committed = layout.latest_checkpoint(root).step
        lost = worker.wait_for(lambda e: e["event"] == "chief_lost")
        assert worker.wait(timeout=60) == 1, worker.stderr
        assert ps.terminate() == 0, ps.stderr
    finally:
        for task in tasks:
            task.kill()
    assert lost["step"] < 5000 and lost["chief"] == "worker/0"
    assert lost["steps_since_commit"] == lost["step"] - committed  # it can see the export dir
    assert not worker.named("training_finished")
    gave_up = worker.named("cluster_lost")[-1]
    assert gave_up["step"] == lost["step"]  # no step trained while it waited
    assert gave_up["waited_seconds"] >= 2
    ours = [line for line in worker.stderr.splitlines() if line.startswith("producer:")]
    assert ours == [worker.stderr.splitlines()[-1]] and "Traceback" not in worker.stderr
    assert f"worker/1 lost the chief (worker/0 at {json.loads(spec)['worker'][0]})" in ours[0]


@pytest.mark.parametrize("args, message", [
    (["--job", "worker", "--task", 0], "need --cluster"),
    (["--cluster", '{"ps": ["a:1"]}', "--job", "ps"], 'must be {"ps": [...], "worker": [...]}'),
    (["--cluster", '{"ps": ["a:1"], "worker": ["b:2"]}', "--job", "worker", "--task", 3],
     "task 3 is outside job 'worker'"),
    (["--cluster", "not-a-file.json", "--job", "ps"], "neither JSON nor a readable file"),
    (["--cluster", '{"ps": ["a:1"], "worker": ["nohost"]}', "--job", "ps"], '"host:port"'),
    (["--cluster", '{"ps": ["127.0.0.1:99999"], "worker": ["b:2"]}', "--job", "ps"],
     "'127.0.0.1:99999' has port 99999, outside 1..65535"),  # TF served it on a random port
    (["--cluster", '{"ps": ["a:1"], "worker": ["b:0"]}', "--job", "ps"],
     "'b:0' has port 0, outside 1..65535"),  # any port, which no other task could know
])
def test_bad_cluster_input_exits_2_with_one_line(args, message, tmp_path):
    result = run("producer", "--export-dir", tmp_path / "x", *args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()


def test_a_relative_export_dir_is_where_the_chief_runs_though_the_ps_runs_elsewhere(tmp_path,
                                                                                   warm):
    """The ps writes each checkpoint's variable shards to the path the chief names. A relative
    one resolved against the ps's own working directory, and every publish failed there with
    ``NotFoundError``."""
    spec = local_cluster(workers=1)
    chief_dir, ps_dir = tmp_path / "chief", tmp_path / "ps"
    chief_dir.mkdir()
    ps_dir.mkdir()
    ps = Process("producer", "--cluster", spec, "--job", "ps", server=warm, cwd=ps_dir)
    chief = Process("producer", "--cluster", spec, "--job", "worker", "--export-dir", "exports",
                    "--steps", 200, "--checkpoint-every", 100, "--export-every", 200,
                    server=warm, cwd=chief_dir)
    try:
        assert chief.wait(timeout=120) == 0, chief.stderr
        assert ps.terminate() == 0, ps.stderr
    finally:
        for process in (chief, ps):
            process.kill()
    assert not chief.named("publish_failed"), chief.named("publish_failed")
    assert chief.named("training_started")[0]["export_dir"] == str(chief_dir / "exports")
    assert [c.step for c in layout.checkpoint_versions(chief_dir / "exports")] == [100, 200]
    complete_versions_only(chief_dir / "exports")
    assert list(ps_dir.iterdir()) == []  # nothing beside the ps


def test_tf_config_names_the_task_when_the_flags_are_absent():
    spec = {"ps": ["h:1"], "worker": ["h:2", "h:3"]}
    role = cluster.resolve(None, None, None, {"TF_CONFIG": json.dumps(
        {"cluster": spec, "task": {"type": "worker", "index": 1}})})
    assert (role.job, role.task, role.is_chief, role.address) == ("worker", 1, False, "h:3")
    assert cluster.resolve(None, None, None, {}) is None  # alone
    with pytest.raises(cluster.ClusterError, match="job 'chief' is not one of"):
        cluster.resolve(None, None, None, {"TF_CONFIG": json.dumps(
            {"cluster": spec, "task": {"type": "chief", "index": 0}})})
