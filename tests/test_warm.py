"""The warm swap: which path each version takes, and that a warm restore never serves stale
weights. Real TensorFlow, real exports, the real consumer loop."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest

from consumer import evaluate, loader
from consumer.loop import Config, Consumer
from shared import commit, graphkey, layout
from tests.helpers import LinearVersions, intercept_for


@pytest.fixture(scope="module")
def versioned(tmp_path_factory):
    """Six linear versions, SavedModel and checkpoint each, whose intercepts all differ."""
    root = tmp_path_factory.mktemp("versioned") / "exports"
    versions = LinearVersions(root, keep=0)
    for step in range(1, 7):
        versions.publish(step, intercept_for(step), checkpoint=True)
    versions.close()
    return root


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _commit_copy(source, root, step: int) -> None:
    staging = commit.staging_dir(root, step)
    shutil.copytree(source, staging, dirs_exist_ok=True)
    commit.commit_dir(staging, layout.savedmodel_path(root, step))


@pytest.mark.parametrize("kind", ["savedmodel", "checkpoint"])
def test_each_warm_swap_gives_the_same_figures_as_a_fresh_load(kind, versioned):
    """The guard against stale weights: every version after the first is restored into a
    session that held an older version, and must score exactly as a fresh import does."""
    live, figures = None, []
    for version in layout.versions(versioned, kind):
        ready = loader.load(version, loader.EVALUATE, live.imported if live else None)
        assert ready.load == (loader.WARM if live else loader.FULL)
        assert ("import" in ready.phases) == (live is None)  # no import on the warm path
        warm = evaluate.evaluate(ready)
        fresh_version = loader.load(version, loader.EVALUATE)
        fresh = evaluate.evaluate(fresh_version)
        fresh_version.close()
        fresh_version.imported.retire()
        assert warm == fresh, (version.step, warm, fresh)
        figures.append(warm["loss"])
        if live is not None:
            live.close()  # out of use: its session becomes the standby for the next version
        live = ready
    live.imported.retire()
    assert len(set(figures)) == len(figures)  # every version really had its own weights


def test_a_changed_graph_or_changed_assets_take_the_full_path(tmp_path, mlp_export, linear_export):
    mlp = layout.latest_savedmodel(mlp_export.root)
    root = tmp_path / "exports"
    commit.claim(root, "mlp")
    _commit_copy(mlp.path, root, 1)
    _commit_copy(mlp.path, root, 2)  # the same graph and assets: warm
    relabeled = commit.staging_dir(root, 3)
    shutil.copytree(mlp.path, relabeled, dirs_exist_ok=True)
    labels = relabeled / "assets" / "labels.txt"
    labels.write_text(labels.read_text().replace("class_", "kind_"))
    relabeled.rename(layout.savedmodel_path(root, 3))
    first, same, changed = layout.savedmodel_versions(root)

    one = loader.load(first, loader.SERVE)
    two = loader.load(same, loader.SERVE, one.imported)
    three = loader.load(changed, loader.SERVE, two.imported)
    assert (one.load, two.load, three.load) == (loader.FULL, loader.WARM, loader.FULL)
    row = {"inputs/features:0": three.dataset.eval_split[0][:1]}
    assert three.session.run("classes/LookupTableFindV2:0", row)[0].startswith(b"kind_")
    assert two.session.run("classes/LookupTableFindV2:0", row)[0].startswith(b"class_")

    linear = layout.latest_checkpoint(linear_export.root)
    mlp_checkpoint = layout.latest_checkpoint(mlp_export.root)
    four = loader.load(mlp_checkpoint, loader.EVALUATE)
    five = loader.load(linear, loader.EVALUATE, four.imported)  # another graph entirely
    assert five.load == loader.FULL and five.imported is not four.imported
    for loaded in (one, two, three, four, five):
        loaded.close()
        loaded.imported.retire()


def test_the_writers_recorded_graph_keys_are_the_ones_a_reader_computes(tmp_path, mlp_export):
    """The producer records each tag's graph key at commit, so a reader need not parse the
    graph; a reader that computes the key finds the same one, and a copy whose graph changed
    after its commit is keyed by what it holds now."""
    from tensorflow.core.protobuf import saved_model_pb2

    from shared import graphkey

    source = layout.latest_savedmodel(mlp_export.root).path
    recorded = json.loads((source / layout.COMMIT_FILE).read_text())
    assert set(recorded["graph_keys"]) == {"serve", "train"}
    bare = tmp_path / "bare"
    shutil.copytree(source, bare)
    (bare / layout.COMMIT_FILE).unlink()  # a writer that records nothing: computed
    for tag in ("serve", "train"):
        assert graphkey.savedmodel_key(bare, tag) == recorded["graph_keys"][tag] \
            == graphkey.savedmodel_key(source, tag)
    changed = tmp_path / "changed"
    shutil.copytree(source, changed)  # commit.json and all
    model = saved_model_pb2.SavedModel.FromString((changed / "saved_model.pb").read_bytes())
    serve = next(m for m in model.meta_graphs if "serve" in m.meta_info_def.tags)
    serve.graph_def.node.add(name="added_after_commit", op="NoOp")
    (changed / "saved_model.pb").write_bytes(model.SerializeToString())
    assert graphkey.savedmodel_key(changed, "serve") != recorded["graph_keys"]["serve"]


@pytest.mark.parametrize("warm_swap", [True, False], ids=["warm", "full"])
def test_memory_stays_flat_over_hundreds_of_reloads_of_the_real_loop(warm_swap, tmp_path,
                                                                     mlp_export):
    """``Consumer.run`` itself, with its collect after each version: 200 versions of one graph,
    each committed once the previous one is live, on either path (``--full-loads``: a graph
    of its own for each). The leak the collect cured grew 46 MB over 480 loads."""
    source = layout.latest_savedmodel(mlp_export.root).path
    root = tmp_path / "exports"
    commit.claim(root, "mlp")
    stop = threading.Event()
    consumer = Consumer(Config(export_dir=root, work_dir=tmp_path / "work", source="savedmodel",
                               mode=loader.EVALUATE, rescan=0.5,
                               warm_swap=warm_swap), stop)
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    samples = {}
    try:
        for step in range(1, 201):
            _commit_copy(source, root, step)
            deadline = time.monotonic() + 30
            while step not in consumer.stats.loaded:
                assert time.monotonic() < deadline, f"version {step} never loaded"
                time.sleep(0.002)
            if step in (30, 200):
                samples[step] = _rss_mb()
                assert consumer.live.load == (loader.WARM if warm_swap else loader.FULL)
            if step > 3:  # keep the directory small; the consumer only needs the newest
                commit.discard_dir(layout.savedmodel_path(root, step - 3))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert consumer.stats.loaded == list(range(1, 201))
    # 170 more loads: -0.2 MB full, -3 MB warm here; without the collect, full grew 33 MB
    assert samples[200] - samples[30] < 5, samples


def test_a_graph_keys_the_same_whatever_numbers_its_functions_got(tmp_path):
    """TF numbers a trace's functions from one counter for the whole process, so each Keras
    ``model.export()`` names them anew (``__inference_signature_wrapper___call___995``...).
    The key renames them; but the object graph's concrete functions are a map, printed sorted
    by name, and ``_1002`` sorts before ``_995``: when a version's numbers straddled a power of
    ten its key changed, and the swap after took the full path (a flaky test showed it). Here
    one export's functions are renumbered across powers of ten, and its key stays."""
    import random
    import re

    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    from tests import tfs_models

    path = tfs_models.KerasExport().save(tmp_path / "keras", np.ones((4, 2), np.float32))
    model = saved_model_pb2.SavedModel()
    model.ParseFromString((path / "saved_model.pb").read_bytes())
    meta_graph = next(m for m in model.meta_graphs if "serve" in m.meta_info_def.tags)
    names = [f.signature.name for f in meta_graph.graph_def.library.function]
    text = text_format.MessageToString(meta_graph, as_utf8=True)
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(
        re.escape(n) for n in sorted(names, key=len, reverse=True)) + r")(?!\w)")
    key = graphkey._key(path, type(meta_graph).FromString(meta_graph.SerializeToString()))
    rng = random.Random(0)
    for scale in (10, 100, 1000, 10_000, 100_000) * 4:
        numbers = rng.sample(range(scale // 2, scale * 2), len(names))
        renamed = {n: re.sub(r"\d+$", str(u), n) for n, u in zip(names, numbers)}
        renumbered = type(meta_graph)()
        text_format.Parse(pattern.sub(lambda m: renamed[m.group(0)], text), renumbered)
        assert graphkey._key(path, renumbered) == key, (scale, renamed)
