"""Chaos: a producer killed with -9 at seeded random moments and restarted each time, while two
consumers follow it (inotify on checkpoints, polling on SavedModels). ``CHAOS_KILLS`` and
``CHAOS_SEED`` set the run: the defaults fit CI, and ``CHAOS_KILLS=300`` is a soak.

Each life is forked warm from a server that imported TensorFlow once (``ForkServer``), so a life
costs about half a second, not the five of a cold import: the kills, not the imports, fill the
run."""

from __future__ import annotations

import os
import random
import time

from shared import commit, layout
from tests.helpers import ForkServer, Process

CHECKPOINT_EVERY, EXPORT_EVERY = 20, 40


def test_kill_9_in_a_loop_loses_nothing_committed_and_the_run_completes(tmp_path):
    kills = int(os.environ.get("CHAOS_KILLS", "12"))
    seed = int(os.environ.get("CHAOS_SEED", "11"))
    # Room for every life to be killed before the run ends (a life trains for 0.3 s at most
    # past its first checkpoint: at most about 100 steps here), and not much more: the last
    # life trains the rest while both consumers follow.
    steps = max(2_000, 300 * kills)
    rng = random.Random(seed)
    root = tmp_path / "exports"
    producer_args = ("--export-dir", root, "--steps", steps, "--checkpoint-every",
                     CHECKPOINT_EVERY, "--export-every", EXPORT_EVERY, "--log-every", 10,
                     "--keep-checkpoints", 2, "--keep-exports", 2)
    followers = [
        Process("consumer", "--export-dir", root, "--work-dir", tmp_path / "inotify",
                "--source", "checkpoint", "--until-step", steps),
        Process("consumer", "--export-dir", root, "--work-dir", tmp_path / "poll",
                "--source", "savedmodel", "--poll", 0.1, "--until-step", steps),
    ]
    lives: list[Process] = []
    server = ForkServer("producer")
    try:
        for life in range(kills):
            producer = Process("producer", *producer_args, server=server)
            lives.append(producer)
            producer.wait_for(lambda e: e["event"] in ("checkpoint_saved", "training_finished"))
            delay = rng.uniform(0, 0.3)  # somewhere in the next few saves and exports
            print(f"life {life}: kill -9 {delay * 1000:.0f} ms after its first checkpoint "
                  f"(CHAOS_SEED={seed})")
            time.sleep(delay)
            producer.kill()
        last = Process("producer", *producer_args, server=server)
        lives.append(last)
        assert last.wait(timeout=300) == 0, last.stderr
        for follower in followers:
            assert follower.wait(timeout=120) == 0, follower.stderr
    finally:
        for process in lives + followers:
            process.kill()
        server.close()

    assert sum(life.popen.returncode == -9 for life in lives) == kills
    committed = reached = 0  # by the lives before: the newest logged commit, the furthest step
    for life in lives:
        start = next(e["step"] for e in life.events
                     if e["event"] in ("training_started", "training_resumed"))
        assert start >= committed, (start, committed)  # a logged commit is never lost
        assert start >= reached - CHECKPOINT_EVERY, (start, reached)  # at most one interval back
        saved = [e["step"] for e in life.events if e["event"] == "checkpoint_saved"]
        committed = max([committed] + saved)
        reached = max([reached] + [e["step"] for e in life.events if "step" in e])
    assert lives[-1].named("training_finished")[-1]["step"] == steps  # the run reached --steps

    for follower in followers:
        # every version a consumer took evaluated, so it was whole; and no committed version
        # failed: a load_failed is only ever one that retention removed under the load
        loaded = [e["step"] for e in follower.named("model_loaded")]
        assert loaded == sorted(loaded) and loaded[-1] == steps
        assert [e["step"] for e in follower.named("evaluated")] == loaded
        assert [e for e in follower.named("load_failed") if not e["deleted_while_loading"]] == []
    # nothing half-written is left after the last start, and what is committed is whole
    assert commit.clean_leftovers(root) == []
    for name in layout.read_checkpoint_state(root):
        assert layout.checkpoint_is_complete(layout.checkpoints_dir(root) / name)
    for version in layout.savedmodel_versions(root):
        assert layout.savedmodel_is_complete(version.path)
