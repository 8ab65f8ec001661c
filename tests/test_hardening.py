"""The consumer's side of the second review's findings, each with the real parts that showed it:
a server left on a deleted version, stale data on the warm path, the huge-pages re-exec, and
errors cut to a line that names no cause."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from consumer import evaluate, loader, train
from harness.processes import free_ports
from harness.rest_client import RestClient
from shared import layout
from tests.helpers import REPO, LinearVersions, Process, command, env, warm


# -- a server whose export dir is wiped and trained again -----------------------------------------


def test_a_wiped_export_dir_retrained_from_scratch_is_followed(tmp_path):
    """Versions 1000 and 2000 served; the dir deleted; 500, 1000 and 1500 published anew. The
    server must not stay on 2000, whose files are gone: it takes the newest there, as TF
    Serving's latest policy does, and says why."""
    export = tmp_path / "exports"
    versions = LinearVersions(export, keep=0)
    server = warm("consumer", "--mode", "serve", "--export-dir", export, "--work-dir",
                  tmp_path / "work", "--port", 0, "--grpc-port", 0)
    port = server.wait_for(lambda e: e["event"] == "serving")["port"]
    for step in (1000, 2000):
        versions.publish(step, -3.0 + step / 10000)
        server.wait_seen(lambda e, s=step: e["event"] == "model_loaded" and e["step"] == s)
    versions.close()
    shutil.rmtree(export)
    gone = server.wait_for(lambda e: e["event"] == "live_version_gone", timeout=30)
    assert gone["step"] == 2000
    retrained = LinearVersions(export, keep=0)
    for step in (500, 1000, 1500):
        retrained.publish(step, -3.0 - step / 10000)
    # It follows the new line as it is published: 2000, whose files are gone, goes as soon as
    # the first new version is available, though that version's step is lower.
    first = server.wait_for(lambda e: e["event"] == "model_loaded")
    assert first["step"] in (500, 1000, 1500)
    unloaded = server.wait_for(lambda e: e["event"] == "model_unloaded")
    assert (unloaded["step"], unloaded["reason"]) == (2000, "its files are gone")
    server.wait_seen(lambda e: e["event"] == "model_loaded" and e["step"] == 1500)
    client = RestClient(port)
    status, headers, body = client.predict("linear", {"instances": [[0.0]]})
    assert (status, headers["x-model-version"]) == (200, "1500")
    assert body["predictions"] == [[pytest.approx(-3.15)]]
    client.close()
    retrained.close()
    assert server.terminate() == 0, server.stderr


# -- a version is scored on its data as it is now, whichever path loaded it ----------------------


def _npz(export: Path, offset: float) -> dict:
    x = np.random.default_rng(3).uniform(0, 10, (200, 1))
    (export / "data").mkdir(parents=True, exist_ok=True)
    y = 1.5 * x - 3.0 + offset
    np.savez(export / "data" / "line.npz", train_features=x, train_labels=y, eval_features=x,
             eval_labels=y)
    return {"name": "npz", "path": "data/line.npz", "task": "regression"}


def test_the_warm_path_and_train_mode_read_changed_data_again(tmp_path):
    export, work = tmp_path / "exports", tmp_path / "work"
    export.mkdir()
    versions = LinearVersions(export, keep=0, dataset=_npz(export, 0.0))
    versions.publish(1, -3.0)
    versions.publish(2, -3.0)  # the same graph and weights: it loads warm
    first, second = layout.savedmodel_versions(export)
    live = loader.load(first, loader.EVALUATE)
    assert evaluate.evaluate(live)["loss"] == pytest.approx(0.0, abs=1e-12)
    _npz(export, 1.0)  # the labels move by 1: the same weights now score a loss of 1
    warm_loaded = loader.load(second, loader.EVALUATE, live.imported)
    assert warm_loaded.load == loader.WARM
    fresh = loader.load(second, loader.EVALUATE)
    assert evaluate.evaluate(warm_loaded) == evaluate.evaluate(fresh)
    assert evaluate.evaluate(warm_loaded)["loss"] == pytest.approx(1.0)
    for loaded in (live, warm_loaded, fresh):
        loaded.close()
    live.imported.retire()
    fresh.imported.retire()

    trainable = loader.load(second, loader.TRAIN)
    train.publish(trainable, work, 3, "linear")
    _npz(export, 2.0)
    train.publish(trainable, work, 4, "linear")  # its versions carry the data as it is now
    with np.load(work / "data" / "line.npz") as copied, np.load(export / "data" /
                                                                "line.npz") as now:
        assert np.array_equal(copied["eval_labels"], now["eval_labels"])
    trainable.close()
    trainable.imported.retire()
    versions.close()


# -- errors name their cause ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["savedmodel", "checkpoint"])
def test_a_load_error_names_its_cause_not_graph_execution_error(kind, tmp_path):
    export = tmp_path / "exports"
    versions = LinearVersions(export, keep=0)
    versions.publish(1, -2.0, checkpoint=True)
    versions.publish(2, -2.5, checkpoint=True)
    versions.close()
    first, second = layout.versions(export, kind)
    data = (second.path / "variables").glob("*.data*") if kind == "savedmodel" else \
        second.path.parent.glob(f"{second.path.name}.data*")
    for path in data:
        path.unlink()
    live = loader.load(first, loader.EVALUATE)
    with pytest.raises(loader.LoadError) as failure:
        loader.load(second, loader.EVALUATE, live.imported)  # the warm path
    assert "No such file or directory" in str(failure.value), failure.value
    assert str(failure.value).startswith("NotFoundError: ")
    assert "Graph execution error" not in str(failure.value)
    live.close()
    live.imported.retire()


# -- the huge-pages re-exec ------------------------------------------------------------------------


def _cold_env(**extra) -> dict:
    environ = {k: v for k, v in env().items() if k != "GLIBC_TUNABLES"}
    return {**environ, **extra}


def test_a_script_calling_main_runs_once_and_is_not_executed_again(tmp_path, linear_export):
    """The re-exec ran ``sys.orig_argv``: a script calling ``main([...])`` ran again from its top."""
    export = tmp_path / "exports"
    shutil.copytree(linear_export.root, export)
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\nprint('side effect', flush=True)\n"
        "from consumer.__main__ import main\n"
        f"sys.exit(main(['--export-dir', {str(export)!r}, '--work-dir', "
        f"{str(tmp_path / 'work')!r}, '--until-step', '0', '--log-format', 'json']))\n")
    result = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                            text=True, env=_cold_env(PYTHONPATH=str(REPO)), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("side effect") == 1


def test_an_explicit_tunable_is_respected(tmp_path):
    """A user's ``glibc.malloc.hugetlb=0`` is a choice: no re-exec, no ``=1`` added."""
    process = Process("consumer", "--export-dir", tmp_path / "exports", "--work-dir",
                      tmp_path / "work", environ=_cold_env(GLIBC_TUNABLES="glibc.malloc.hugetlb=0"))
    process.wait_for(lambda e: e["event"] == "consumer_started", timeout=60)
    environ = open(f"/proc/{process.popen.pid}/environ", "rb").read().split(b"\0")
    assert b"GLIBC_TUNABLES=glibc.malloc.hugetlb=0" in environ
    assert process.terminate() == 0, process.stderr


@pytest.mark.parametrize("delay", [0.05, 0.3, 1.0])
def test_a_stop_signal_around_the_re_exec_is_never_lost(tmp_path, delay):
    """A SIGTERM between the handlers' install and the exec was lost: the consumer ran on until
    killed 15 s later. Now the exec comes first and the stop signals stay pending across it:
    sent at any moment of the start, SIGTERM ends the consumer within seconds."""
    child = subprocess.Popen(command("consumer", "--export-dir", tmp_path / "exports",
                                     "--work-dir", tmp_path / "work"),
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=_cold_env())
    time.sleep(delay)  # the moment of the start the signal lands in: what this test varies
    child.send_signal(signal.SIGTERM)
    try:
        code = child.wait(timeout=30)
    finally:
        child.kill()
    assert code in (0, -signal.SIGTERM), child.stderr.read()


def _transparent_huge_pages() -> bool:
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return "[never]" not in mode


@pytest.mark.skipif(not _transparent_huge_pages(), reason="the kernel's huge pages are off")
def test_huge_pages_are_in_use_after_a_large_restore(tmp_path):
    """Not just the tunable in the environment: the consumer's memory is in huge pages after it
    loads a model with a 64 MiB variable, and none are without the tunable."""
    from shared.tfcompat import tf, v1

    base = tmp_path / "big"
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4096], name="x")
        w = v1.Variable(tf.ones([4096, 4096]), name="w")
        y = tf.identity(tf.matmul(x, w), name="y")
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            {"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(base / "1"))
            builder.add_meta_graph_and_variables(session, ["serve"],
                                                 signature_def_map={"serving_default": signature})
            builder.save()
    huge = {}
    for label, environ in (("on", _cold_env()), ("off", _cold_env(TF_HANDOFF_NO_HUGE_PAGES="1"))):
        server = Process("consumer.model_server", f"--model_base_path={base}", "--model_name=big",
                         f"--rest_api_port={free_ports(1)[0]}", "--port=0", "--work_dir",
                         tmp_path / label, environ=environ)
        server.wait_for(lambda e: e["event"] == "model_loaded", timeout=120)
        rollup = Path(f"/proc/{server.popen.pid}/smaps_rollup").read_text()
        huge[label] = int(next(line.split()[1] for line in rollup.splitlines()
                               if line.startswith("AnonHugePages:")))
        assert server.terminate() == 0, server.stderr
    assert huge["on"] >= 32 * 1024 and huge["off"] == 0, huge
