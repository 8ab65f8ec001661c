"""The export-dir layout and commit protocol, on real files."""

import json
import os
import time

import pytest

from shared import commit, layout


def test_state_file_round_trips_and_tensorflow_reads_it(tmp_path):
    from shared.tfcompat import tf

    commit.claim(tmp_path, "linear")
    for step in (10, 20):
        for suffix in (".index", ".meta", ".data-00000-of-00001"):
            (tmp_path / "checkpoints" / f"model.ckpt-{step}{suffix}").write_bytes(b"x")
    commit.write_checkpoint_state(tmp_path, [("model.ckpt-10", None), ("model.ckpt-20", None)])

    assert layout.read_checkpoint_state(tmp_path) == ["model.ckpt-10", "model.ckpt-20"]
    latest = layout.latest_checkpoint(tmp_path)
    assert (latest.kind, latest.step) == ("checkpoint", 20)
    assert layout.checkpoint_is_complete(latest.path)
    state = tf.train.get_checkpoint_state(str(tmp_path / "checkpoints"))
    assert state.model_checkpoint_path == str(tmp_path / "checkpoints" / "model.ckpt-20")
    assert len(state.all_model_checkpoint_paths) == 2
    # each checkpoint keeps its own commit time, in TF's own field
    assert list(state.all_model_checkpoint_timestamps) == [
        v.committed_at for v in layout.checkpoint_versions(tmp_path)]


def test_the_commit_time_is_the_writers_own_not_a_ctime(tmp_path):
    """The writer records when it committed; ctime is only a fallback. On some kernels ctime
    comes from a coarse clock (several ms early), every checkpoint in a state file shares one,
    and anything that touches an inode later (a chmod, a copy) moves it."""
    commit.claim(tmp_path, "linear")
    before = time.time()
    commit.write_checkpoint_state(tmp_path, [("model.ckpt-1", None)])
    staging = commit.staging_dir(tmp_path, 1)
    (staging / "saved_model.pb").write_bytes(b"x")
    commit.commit_dir(staging, layout.savedmodel_path(tmp_path, 1))
    after = time.time()
    time.sleep(0.05)
    commit.write_checkpoint_state(tmp_path, layout.read_checkpoint_entries(tmp_path)
                                  + [("model.ckpt-2", None)])
    layout.savedmodel_path(tmp_path, 1).chmod(0o755)  # moves the directory's ctime to now

    first, second = layout.checkpoint_versions(tmp_path)
    assert before <= first.committed_at <= after < second.committed_at
    savedmodel = layout.latest_savedmodel(tmp_path)
    assert before <= savedmodel.committed_at <= after < savedmodel.ctime


def test_incomplete_checkpoint_is_detected(tmp_path):
    prefix = tmp_path / "model.ckpt-5"
    for suffix in (".index", ".data-00000-of-00002", ".data-00001-of-00002"):
        (tmp_path / f"model.ckpt-5{suffix}").write_bytes(b"x")
    assert not layout.checkpoint_is_complete(prefix)  # no .meta
    (tmp_path / "model.ckpt-5.meta").write_bytes(b"x")
    assert layout.checkpoint_is_complete(prefix)
    (tmp_path / "model.ckpt-5.data-00001-of-00002").unlink()
    assert not layout.checkpoint_is_complete(prefix)  # a shard is missing


def test_staging_dirs_are_never_versions_and_commit_is_one_rename(tmp_path):
    commit.claim(tmp_path, "mlp")
    staging = commit.staging_dir(tmp_path, 7)
    (staging / "saved_model.pb").write_bytes(b"pb")
    assert layout.savedmodel_versions(tmp_path) == []
    from shared.durable import umask
    assert staging.stat().st_mode & 0o777 == 0o777 & ~umask()  # as mkdir makes it, not mkdtemp

    commit.commit_dir(staging, layout.savedmodel_path(tmp_path, 7))
    assert [v.step for v in layout.savedmodel_versions(tmp_path)] == [7]

    again = commit.staging_dir(tmp_path, 7)
    (again / "saved_model.pb").write_bytes(b"other")
    with pytest.raises(OSError):  # never merges into a committed version
        commit.commit_dir(again, layout.savedmodel_path(tmp_path, 7))
    assert (tmp_path / "savedmodels" / "7" / "saved_model.pb").read_bytes() == b"pb"


def test_clean_leftovers_removes_only_uncommitted_work(tmp_path):
    commit.claim(tmp_path, "linear")
    ckpts = tmp_path / "checkpoints"
    for step in (10, 20):
        for suffix in (".index", ".meta", ".data-00000-of-00001"):
            (ckpts / f"model.ckpt-{step}{suffix}").write_bytes(b"x")
    commit.write_checkpoint_state(tmp_path, [("model.ckpt-10", None)])  # 20 was written, never committed
    staging = commit.staging_dir(tmp_path, 30)
    (ckpts / "model.ckpt-30_temp").mkdir()
    committed = tmp_path / "savedmodels" / "10"
    committed.mkdir()

    removed = commit.clean_leftovers(tmp_path)

    assert staging in removed and not staging.exists()
    assert not (ckpts / "model.ckpt-30_temp").exists()
    assert not (ckpts / "model.ckpt-20.index").exists()
    assert (ckpts / "model.ckpt-10.index").exists() and committed.exists()


def test_claim_refuses_a_file_and_another_models_dir(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    with pytest.raises(layout.LayoutError, match="is a file"):
        commit.claim(a_file, "linear")
    with pytest.raises(layout.LayoutError, match="not writable"):
        commit.claim(a_file / "sub", "linear")
    assert a_file.read_text() == "keep me"

    commit.claim(tmp_path / "x", "mlp")
    with pytest.raises(layout.LayoutError, match="model 'mlp'"):
        commit.claim(tmp_path / "x", "linear")
    assert json.loads((tmp_path / "x" / "export.json").read_text()) == {"model": "mlp"}


def test_commit_paths_are_the_state_file_and_integer_dirs(tmp_path):
    assert layout.is_commit_path(tmp_path, tmp_path / "checkpoints" / "checkpoint")
    assert layout.is_commit_path(tmp_path, tmp_path / "savedmodels" / "120")
    assert not layout.is_commit_path(tmp_path, tmp_path / "savedmodels" / ".tmp-120-abc")
    assert not layout.is_commit_path(tmp_path, tmp_path / "savedmodels" / "120" / "saved_model.pb")
    assert not layout.is_commit_path(tmp_path, tmp_path / "checkpoints" / "model.ckpt-1.meta")


def test_discard_removes_the_version(tmp_path):
    """That it hides the version first, durably, is checked on real system calls in
    tests/test_durability.py."""
    version = tmp_path / "savedmodels" / "3"
    (version / "variables").mkdir(parents=True)
    commit.discard_dir(version)
    assert not version.exists() and os.listdir(tmp_path / "savedmodels") == []


def test_only_ascii_digits_make_a_version_number(tmp_path):
    """"²".isdigit() is True and int("²") raises: a stray name once crashed the listing."""
    commit.claim(tmp_path, "linear")
    for name in ("²", "٣", "12\n", "7"):
        (layout.savedmodels_dir(tmp_path) / name).mkdir()
    commit.write_checkpoint_state(tmp_path, [("model.ckpt-²", None), ("model.ckpt-5", None)])
    (layout.checkpoints_dir(tmp_path) / "model.ckpt-٣.index").write_bytes(b"x")

    assert [v.step for v in layout.savedmodel_versions(tmp_path)] == [7]
    assert [v.step for v in layout.checkpoint_versions(tmp_path)] == [5]
    assert not layout.is_commit_path(tmp_path, layout.savedmodels_dir(tmp_path) / "²")
    assert commit.clean_leftovers(tmp_path) == []  # not ours to delete, and no crash
