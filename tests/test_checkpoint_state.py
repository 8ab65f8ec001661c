"""The checkpoint state file when someone else's hand has damaged it: the producer, its writer,
refuses it in one line; a reader keeps the checkpoints it names and loses only the times."""

from __future__ import annotations

import json
import threading

import pytest

from shared import checkpoint_state, layout
from tests.helpers import run

DAMAGED = ('model_checkpoint_path: "model.ckpt-200"\n'
           'all_model_checkpoint_paths: "model.ckpt-100"\n'
           'all_model_checkpoint_paths: "model.ckpt-200"\n'
           'all_model_checkpoint_timestamps: 1700000000.5\n'
           'all_model_checkpoint_timestamps: 1.2.3\n')


def _damaged_export(root):
    (root / "checkpoints").mkdir(parents=True)
    (root / "export.json").write_text(json.dumps({"model": "linear"}))
    layout.state_file(root).write_text(DAMAGED)
    return layout.state_file(root)


def test_the_producer_refuses_a_damaged_state_file_in_one_line_naming_it(tmp_path):
    """It was a traceback and exit 1, from the state file's parser, after TensorFlow's import."""
    state = _damaged_export(tmp_path / "exports")
    result = run("producer", "--export-dir", tmp_path / "exports", "--steps", 10, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(state) in result.stderr and "line 5" in result.stderr, result.stderr
    assert "1.2.3" in result.stderr, result.stderr
    assert state.read_text() == DAMAGED  # nothing rewritten


def test_the_producer_refuses_a_state_file_that_is_not_text(tmp_path):
    """It was a UnicodeDecodeError traceback, from the manifest check's look for versions."""
    root = tmp_path / "exports"
    (root / "checkpoints").mkdir(parents=True)
    layout.state_file(root).write_bytes(b"\xff\xfe garbage\n")
    result = run("producer", "--export-dir", root, "--steps", 10, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(layout.state_file(root)) in result.stderr and "utf-8" in result.stderr
    assert sorted(p.name for p in root.iterdir()) == ["checkpoints"]  # nothing written


def test_a_reader_keeps_the_checkpoints_and_treats_an_unreadable_time_as_unknown(tmp_path):
    """The consumer's source reads the state file through ``shared.layout``: a damaged time
    raised ValueError out of its loop. Now only that time is unknown, as TF treats a missing one,
    and the commit time falls back to the state file's ctime."""
    from consumer.source import VersionSource

    root = tmp_path / "exports"
    state = _damaged_export(root)
    assert checkpoint_state.parse(DAMAGED) == [("model.ckpt-100", 1700000000.5),
                                               ("model.ckpt-200", None)]
    source = VersionSource(root, "checkpoint", rescan=0.1)
    try:
        newest = source.next_listing(bool, threading.Event())[-1]
    finally:
        source.close()
    assert (newest.step, newest.recorded_at) == (200, None)
    assert newest.committed_at == state.stat().st_ctime


@pytest.mark.parametrize("line, error", [
    ("all_model_checkpoint_timestamps: 1.2.3", "line 2: all_model_checkpoint_timestamps '1.2.3'"),
    ("all_model_checkpoint_timestamps: nan", "'nan' is not a finite number"),
    ("all_model_checkpoint_paths: model.ckpt-1", "line 2: all_model_checkpoint_paths"),
])
def test_a_strict_parse_names_the_first_damaged_line(line, error):
    text = f'model_checkpoint_path: "model.ckpt-1"\n{line}\n'
    with pytest.raises(checkpoint_state.StateError, match=error):
        checkpoint_state.parse(text, strict=True)
    checkpoint_state.parse(text)  # a reader's parse does not raise


def test_fields_we_do_not_write_are_left_alone_even_when_strict():
    """TF's own writer adds ``last_preserved_timestamp``."""
    text = ('model_checkpoint_path: "model.ckpt-1"\nall_model_checkpoint_paths: "model.ckpt-1"\n'
            "all_model_checkpoint_timestamps: 1700000000.25\nlast_preserved_timestamp: 17.5\n")
    assert checkpoint_state.parse(text, strict=True) == [("model.ckpt-1", 1700000000.25)]
