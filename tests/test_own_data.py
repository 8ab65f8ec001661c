"""A model on a user's own .npz data, built only from docs/CONTRACT.md's example (run here as
written there), through the consumer's evaluate and train modes; and the checks on that data."""

from __future__ import annotations

import os
import shutil
import zipfile

import numpy as np
import pytest

from consumer import loader
from consumer.loop import Config
from shared import layout
from tests.helpers import REPO
from tests.test_consumer import Running


def example_code() -> str:
    section = (REPO / "docs" / "CONTRACT.md").read_text().split("## A model on your own data")[1]
    return section.split("```python\n")[1].split("```")[0]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    where = tmp_path_factory.mktemp("own_data")
    cwd = os.getcwd()
    os.chdir(where)  # the example writes my_exports/ where it runs, as a user's script would
    try:
        exec(compile(example_code(), "docs/CONTRACT.md", "exec"), {"__name__": "example"})
    finally:
        os.chdir(cwd)
    return where / "my_exports"


def _follow(root, work, source, mode, until, **extra):
    running = Running(Config(export_dir=root, work_dir=work, source=source, mode=mode,
                             until_step=until, **extra))
    running.thread.join(timeout=120)
    assert not running.thread.is_alive()
    return running.consumer


@pytest.mark.parametrize("source", ["savedmodel", "checkpoint"])
def test_the_consumer_evaluates_a_model_on_its_own_data(source, blobs, tmp_path):
    consumer = _follow(blobs, tmp_path / "work", source, loader.EVALUATE, 300)
    assert consumer.stats.loaded == [300] and consumer.stats.failed == []
    record = (tmp_path / "work" / "evaluations.jsonl").read_text().splitlines()
    assert len(record) == 1 and '"accuracy": ' in record[0]
    accuracy = float(record[0].split('"accuracy": ')[1].split(",")[0])
    assert accuracy > 0.9  # a linear boundary, learned; chance is about 0.5


def test_the_consumer_keeps_training_it_and_its_versions_carry_the_data(blobs, tmp_path):
    work = tmp_path / "retrained"
    consumer = _follow(blobs, work, "savedmodel", loader.TRAIN, 300, train_steps=50)
    assert consumer.stats.loaded == [300] and consumer.stats.fatal is None
    assert (work / "data" / "blobs.npz").read_bytes() == (blobs / "data" / "blobs.npz").read_bytes()
    # the work dir is an export dir in its own right, data included: evaluate its version
    again = _follow(work, tmp_path / "evaluating", "savedmodel", loader.EVALUATE, 350)
    assert again.stats.loaded == [350] and again.stats.failed == []


def _zip_bomb(path):
    """An .npz whose one member unpacks to 300 MiB of zeros (about 300 KB on disk)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("train_features.npy", "w", force_zip64=True) as member:
            for _ in range(300):
                member.write(bytes(2**20))


def _rewrite(path, **changes):
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize("damage, message", [
    (lambda data: data.unlink(), "is missing"),
    (lambda data: _rewrite(data, class_names=None), "lacks class_names"),
    (lambda data: _rewrite(data, train_labels=np.zeros(1000, np.float32)),
     "train_labels must be 1-D integers"),
    (lambda data: _rewrite(data, eval_labels=np.full(200, 7, np.int32)),
     "eval_labels must lie in 0..1"),
    (lambda data: _rewrite(data, eval_features=np.zeros((200, 3), np.float32)),
     "differ in their number of columns"),
    (lambda data: data.write_bytes(b"not a zip"), "is not a readable .npz"),
    (_zip_bomb, "unpacks to 300 MiB"),
], ids=["missing", "no_class_names", "float_labels", "label_range", "columns", "garbage",
        "zip_bomb"])
def test_bad_data_is_a_load_error_with_its_reason(damage, message, blobs, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(blobs, root)
    damage(root / "data" / "blobs.npz")
    version = layout.latest_savedmodel(root)
    with pytest.raises(loader.LoadError, match="DatasetError") as refused:
        loader.load(version, loader.EVALUATE)
    assert message in str(refused.value)
