"""The producer on real TensorFlow and real files: convergence, the contract, both tags, CLI."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

from shared import commit, contract, datasets, layout
from tests.helpers import REPO, run, warm


def _restore_checkpoint(prefix):
    """A fresh graph and session holding ``prefix``, as a reader with no model code sees it."""
    from shared.tfcompat import tf, v1

    graph = tf.Graph()
    with graph.as_default():
        saver = v1.train.import_meta_graph(f"{prefix}.meta", clear_devices=True)
        session = v1.Session(graph=graph)
        saver.restore(session, str(prefix))  # outside the graph it would take the eager path
    return graph, session


def test_linear_reproduces_seed_000_convergence(linear_export):
    progress = linear_export.named("train_progress")
    assert [e["epoch"] for e in progress] == list(range(0, 2000, 100))
    assert {"step", "epoch", "loss", "slope", "intercept"} <= set(progress[0])
    assert progress[0]["loss"] > 10  # from slope = intercept = 1.8, far from the line
    assert progress[-1]["slope"] == pytest.approx(1.5, abs=0.01)
    assert progress[-1]["intercept"] == pytest.approx(-3.0, abs=0.05)
    assert progress[-1]["loss"] < progress[0]["loss"] / 1000


def test_mlp_reproduces_seed_002_climb(mlp_export):
    progress = {e["epoch"]: e["accuracy"] for e in mlp_export.named("train_progress")}
    assert progress[0] < 0.26  # chance is 20%
    assert progress[100] > 0.30  # the seed: 35%


def test_versions_are_published_with_retention(linear_export):
    root = linear_export.root
    assert layout.read_checkpoint_state(root) == [f"model.ckpt-{s}" for s in range(1600, 2001, 100)]
    assert [v.step for v in layout.savedmodel_versions(root)] == [500, 1000, 1500, 2000]
    assert all(layout.savedmodel_is_complete(v.path) for v in layout.savedmodel_versions(root))
    saved = linear_export.named("checkpoint_saved")
    assert [e["step"] for e in saved] == list(range(100, 2001, 100))
    assert saved[-1]["path"] == str(layout.checkpoint_prefix(root, 2000))
    assert [e["step"] for e in linear_export.named("model_exported")] == [500, 1000, 1500, 2000]
    assert list((root / "events").glob("events.out.tfevents.*"))
    assert not [p for p in (root / "savedmodels").iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_contract_survives_import_meta_graph_and_one_more_step(model, linear_export, mlp_export):
    from shared.tfcompat import v1

    root = {"linear": linear_export, "mlp": mlp_export}[model].root
    latest = layout.latest_checkpoint(root)
    graph, session = _restore_checkpoint(latest.path)
    with session:
        handles = contract.read_training(graph)
        assert session.run(handles.global_step) == latest.step
        assert set(handles.metrics) == set(handles.dataset.metric_names)
        assert graph.get_collection(contract.FETCHES)[0] is handles.metrics["loss"]
        assert graph.get_collection(v1.GraphKeys.SUMMARIES)
        features, labels = handles.dataset.batch(latest.step)
        loss, _ = session.run(graph.get_collection(contract.FETCHES),
                              {handles.features: features, handles.labels: labels})
        assert np.isfinite(loss)
        assert session.run(handles.global_step) == latest.step + 1


def test_both_tags_load_and_serve_graph_has_no_training_ops(mlp_export):
    from shared.tfcompat import tf, v1

    version = layout.latest_savedmodel(mlp_export.root)
    for tag in (contract.TRAIN_TAG, contract.SERVE_TAG):
        graph = tf.Graph()
        with v1.Session(graph=graph) as session:
            meta = v1.saved_model.loader.load(session, [tag], str(version.path))
            assert contract.read_dataset(graph).name == "random_classes"
            if tag == contract.TRAIN_TAG:
                contract.read_training(graph)
                continue
            op_types = {op.type for op in graph.get_operations()}
            assert not {t for t in op_types if "Apply" in t or t.endswith("Grad")}
            assert not [op for op in graph.get_operations() if "gradients" in op.name]
            assert not graph.get_collection(contract.TRAIN_OP)
            serving = contract.read_serving(graph, meta)
            features, labels = serving.dataset.eval_split
            signature = meta.signature_def[contract.SIGNATURE_KEY]
            classes = graph.get_tensor_by_name(signature.outputs["classes"].name)
            probabilities, names = session.run([serving.output, classes], {serving.features: features})
            assert probabilities.shape == (1600, 5)
            assert set(names) <= {f"class_{i}".encode() for i in range(5)}
            assert serving.dataset.score(probabilities, labels)["accuracy"] > 0.3


def test_tf2_loader_and_saved_model_cli_read_the_export(mlp_export):
    version = layout.latest_savedmodel(mlp_export.root)
    script = (
        "import sys, numpy as np\n"
        "from shared.tfcompat import tf\n"
        "m = tf.saved_model.load(sys.argv[1], tags=['serve'])\n"
        "out = m.signatures['serving_default'](features=tf.constant(np.zeros((2, 28), 'float32')))\n"
        "print(sorted(out), out['classes'].numpy()[0].decode())\n")
    loaded = subprocess.run([sys.executable, "-c", script, str(version.path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("['classes', 'probabilities'] class_")

    cli = subprocess.run([str(REPO / ".venv/bin/saved_model_cli"), "show", "--all", "--dir",
                          str(version.path)], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "tag-set: 'serve'" in cli.stdout and "tag-set: 'train'" in cli.stdout
    assert "inputs['features']" in cli.stdout and "outputs['probabilities']" in cli.stdout


def test_serve_path_and_training_metrics_agree(linear_export):
    """The catalog's scorer on serving outputs equals the training graph's metrics collection."""
    from shared.tfcompat import tf, v1

    root = linear_export.root
    step = layout.latest_checkpoint(root).step
    data = datasets.load({"name": "linear", "seed": 0})
    graph, session = _restore_checkpoint(layout.checkpoint_prefix(root, step))
    with session:
        handles = contract.read_training(graph)
        features, labels = data.eval_split
        from_metrics = session.run(handles.metrics["loss"], {handles.features: features,
                                                              handles.labels: labels})
    graph = tf.Graph()
    with v1.Session(graph=graph) as session:
        meta = v1.saved_model.loader.load(session, ["serve"], str(layout.savedmodel_path(root, step)))
        serving = contract.read_serving(graph, meta)
        scored = data.score(session.run(serving.output, {serving.features: features}), labels)
    assert scored["loss"] == pytest.approx(from_metrics, rel=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet"], "invalid choice: 'resnet'"),
    (["--steps", "-3"], "must be >= 0"),
    (["--checkpoint-every", "0"], "must be > 0"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path):
    result = run("producer", "--export-dir", tmp_path / "x", *args, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "x").exists()


def test_bad_export_dirs_exit_2_and_keep_data(tmp_path, linear_export):
    a_file = tmp_path / "file"
    a_file.write_text("precious")
    result = run("producer", "--export-dir", a_file, timeout=60)
    assert result.returncode == 2 and "is a file" in result.stderr
    assert result.stderr.count("\n") == 1 and a_file.read_text() == "precious"

    before = sorted(p.name for p in (linear_export.root / "checkpoints").iterdir())
    result = run("producer", "--model", "mlp", "--export-dir", linear_export.root, timeout=60)
    assert result.returncode == 2 and "holds versions of model 'linear'" in result.stderr
    assert sorted(p.name for p in (linear_export.root / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("manifest, message", [
    (b"[]", "expected an object"),
    (b"\xff\xfe\x00garbage", "not a readable manifest"),
    (None, "Is a directory"),
])
def test_a_bad_manifest_exits_2_with_one_line(manifest, message, tmp_path):
    """Each of these was a 13-22 line traceback."""
    root = tmp_path / "exports"
    root.mkdir()
    if manifest is None:
        (root / "export.json").mkdir()
    else:
        (root / "export.json").write_bytes(manifest)
    result = run("producer", "--export-dir", root, "--steps", "10", timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert sorted(p.name for p in root.iterdir()) == ["export.json"]  # nothing else touched


def test_keep_checkpoint_every_hours_keeps_files_outside_the_state(tmp_path):
    import time

    from shared.publish import Publisher
    from shared.tfcompat import v1
    from shared import models

    spec = models.MODELS["linear"]
    graph = models.build_training_graph(spec, datasets.load({"name": "linear"}), seed=0)
    for hours, root in ((None, tmp_path / "plain"), (1e-6, tmp_path / "hourly")):
        commit.claim(root, "linear")
        publisher = Publisher(root, graph, keep_checkpoints=2, keep_checkpoint_every_hours=hours)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            for step in range(1, 6):
                time.sleep(0.01)  # 1e-6 hours is 3.6 ms: each retired checkpoint is due to be kept
                publisher.save_checkpoint(session, step)
        assert layout.read_checkpoint_state(root) == ["model.ckpt-4", "model.ckpt-5"]
        on_disk = sorted(p.name for p in (root / "checkpoints").glob("*.index"))
        expected = 2 if hours is None else 5
        assert len(on_disk) == expected, on_disk


def test_a_committed_checkpoint_is_never_written_over(tmp_path):
    """A writer restarted on its directory (a train-mode consumer reaching the same end step)
    must not rewrite a checkpoint the state file already names: a reader may be loading it."""
    from shared.publish import Publisher
    from tests.helpers import LinearVersions

    root = tmp_path / "exports"
    versions = LinearVersions(root)
    versions.publish(5, -1.0, checkpoint=True)
    files = sorted(layout.checkpoints_dir(root).glob("model.ckpt-5.*"))
    before = [(p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in files]
    versions.session.run(versions.set_intercept, {versions.value: 7.0})  # other weights now
    restarted = Publisher(root, versions.graph)
    assert restarted.save_checkpoint(versions.session, 5) is None
    assert [(p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in files] == before
    assert restarted.save_checkpoint(versions.session, 6) is not None  # a new step still saves
    versions.close()


def _run_on_a_terminal(*args, columns: int = 120) -> tuple[int, str, str]:
    """The producer with a real pseudo-terminal ``columns`` wide as its stdout and stderr: its
    exit code, what a person would see (the ANSI control sequences taken out), and the live
    display's last frame (after the last erase-line sequence, which each redraw starts with)."""
    from tests.helpers import env

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    child = subprocess.Popen([sys.executable, "-m", "producer", *map(str, args)], cwd=REPO,
                             stdout=slave, stderr=slave, env={**env(), "COLUMNS": str(columns)})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    plain = lambda raw: re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", raw).decode()  # noqa: E731
    return child.wait(timeout=60), plain(out), plain(out.rsplit(b"\x1b[2K", 1)[-1])


# Each field of the live display, whole: the step count, the bar, steps/s, the ETA, each figure
# ("loss 0.00235"), and the published versions.
_NUMBER = r"-?[0-9][0-9.]*(?:e[-+][0-9]+)?"
_FIELDS = [r"(?:^| )1500/1500 ", r" ━+ ", r" [0-9,]+/s ", r" 0:00:00 ", r"→ ckpt 1500 sm 1500"]


def _assert_whole_at_80_columns(screen: str, last: str, figures: list[str]) -> list[str]:
    """No field of the display cut short, and its last frame's lines within 80 columns."""
    assert "…" not in screen, last
    lines = last.strip("\r\n").split("\r\n")
    assert all(len(line) <= 80 for line in lines), lines
    flat = " ".join(" ".join(lines).split())
    for field in _FIELDS + [rf"(?:^| ){name} {_NUMBER}(?: |$)" for name in figures]:
        assert re.search(field, flat), (field, lines)
    return lines


def test_the_linear_models_progress_at_80_columns_keeps_every_field_whole(tmp_path):
    """At 80 columns rich cut every field of the linear model's line short, e.g. ``200… ━━━━
    1,34… 0:0… loss 0.00235 slope…``. Its figures do not fit beside the rest: they go below."""
    code, screen, last = _run_on_a_terminal(
        "--export-dir", tmp_path / "tty", "--steps", 1500, "--checkpoint-every", 100,
        "--export-every", 500, "--log-every", 5, columns=80)
    assert code == 0, screen
    lines = _assert_whole_at_80_columns(screen, last, ["loss", "slope", "intercept"])
    assert len(lines) == 2 and lines[1].lstrip().startswith("loss "), lines


@pytest.mark.parametrize("width, lines", [(120, 1), (100, 1), (80, 2), (60, 2), (40, 4)])
def test_the_progress_layout_keeps_every_field_whole_at_any_width(width, lines):
    import io

    from rich.console import Console

    from producer.progress import LiveProgress

    screen = io.StringIO()
    console = Console(file=screen, width=width, force_terminal=True)
    progress = LiveProgress(console=console, auto_refresh=False)
    progress.add_task("train", total=100000, completed=31337, published="→ ckpt 31300 sm 30000",
                      figures=["loss 0.002351", "slope 1.5", "intercept -2.998"])
    console.print(*progress.get_renderables())
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue()).splitlines()
    assert len(shown) == lines and all(len(line) <= width for line in shown), shown
    flat = " ".join(" ".join(shown).split())
    for field in ("31337/100000 ━", " -/s -:--:-- ", "loss 0.002351", "slope 1.5",
                  "intercept -2.998", "→ ckpt 31300 sm 30000"):
        assert field in flat, (field, shown)


def test_a_terminal_gets_one_progress_line_and_json_stays_event_for_event(tmp_path):
    """At 80 columns, with every field whole (the layout test covers other widths)."""
    args = ("--model", "mlp", "--steps", 1500, "--checkpoint-every", 100, "--export-every", 500,
            "--log-every", 5)
    code, screen, last = _run_on_a_terminal("--export-dir", tmp_path / "tty", *args, columns=80)
    assert code == 0, screen
    line = re.compile(r"^1500/1500 ━+ [\d,]+/s 0:00:00 loss [\d.]+ +accuracy [\d.]+ "
                      r"→ ckpt 1500 sm 1500$")
    [shown] = _assert_whole_at_80_columns(screen, last, ["loss", "accuracy"])
    assert line.search(shown), shown
    for event in ("training_started", "model_exported", "training_finished"):
        assert event in screen  # what matters prints above the line...
    assert "checkpoint_saved" not in screen and "train_progress" not in screen  # ...not routine

    producer = warm("producer", "--export-dir", tmp_path / "json", *args)  # a pipe: JSON
    assert producer.wait() == 0, producer.stderr
    assert producer.text == []  # every line of stdout is a JSON event: no bar, no console line
    events = [event["event"] for event in producer.events]
    assert events.count("checkpoint_saved") == 15 and events.count("model_exported") == 3
    assert events.count("train_progress") == 6 and events[0] == "training_started"
    assert events[-1] == "training_finished"
