"""``python -m shared.inspect`` on the producer's real outputs, for both models."""

import json

import pytest
from google.protobuf import text_format

from shared import inspect, layout
from tests.helpers import run


def _reports(capsys, *args):
    assert inspect.main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_checkpoint_shows_the_seeds_collections_variables_and_global_step(capsys, linear_export):
    prefix = layout.latest_checkpoint(linear_export.root).path
    for path in (prefix, f"{prefix}.meta"):
        [report] = _reports(capsys, path)
        assert {"train_op", "summaries", "variables", "trainable_variables"} <= set(report["collections"])
        assert report["collections"]["dataset"]["kind"] == "bytes_list"
        assert "model_variables/slope:0" in report["collections"]["trainable_variables"]["members"]
        assert report["saver_def"]["restore_op_name"] == "save/restore_all"
        assert report["graph"]["node_count"] == sum(report["graph"]["op_types"].values())
        assert "ResourceApplyGradientDescent" in report["meta_info"]["stripped_op_list"]
        assert report["variables"]["model_variables/slope"] == []
        assert report["global_step"] == 2000


def test_out_files_list_operations_and_round_trip_through_text_format(tmp_path, capsys, linear_export):
    from tensorflow.core.framework import graph_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    prefix = layout.latest_checkpoint(linear_export.root).path
    [report] = _reports(capsys, prefix, "--out", tmp_path)
    files = tmp_path / report["label"]
    operations = (files / "get_operations.txt").read_text().splitlines()
    assert "inputs/features\tPlaceholder" in operations
    assert "inputs/labels\tPlaceholder" in operations
    assert any(line.startswith("model_variables/slope\t") for line in operations)

    graph_def = text_format.Parse((files / "graphdef.pbtxt").read_text(), graph_pb2.GraphDef())
    assert len(graph_def.node) == len(operations)
    meta = text_format.Parse((files / "metagraph.pbtxt").read_text(), meta_graph_pb2.MetaGraphDef())
    original = meta_graph_pb2.MetaGraphDef()
    original.ParseFromString(prefix.with_name(prefix.name + ".meta").read_bytes())
    assert meta == original


def test_savedmodel_shows_both_tags_signature_and_assets(tmp_path, capsys, mlp_export):
    version = layout.latest_savedmodel(mlp_export.root)
    reports = {r["meta_info"]["tags"][0]: r for r in _reports(capsys, version.path, "--out", tmp_path)}
    assert set(reports) == {"train", "serve"}
    signature = reports["serve"]["signatures"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["features"] == {"name": "inputs/features:0", "dtype": "float32",
                                               "shape": [-1, 28]}
    assert signature["outputs"]["classes"]["dtype"] == "string"
    assert [a["filename"] for a in reports["serve"]["asset_files"]] == ["labels.txt"]
    assert "train_op" in reports["train"]["collections"]
    assert "train_op" not in reports["serve"]["collections"]
    for report in reports.values():
        from tensorflow.core.framework import graph_pb2
        text_format.Parse((tmp_path / report["label"] / "graphdef.pbtxt").read_text(),
                          graph_pb2.GraphDef())


def test_export_dir_takes_the_newest_of_each_kind_and_text_has_every_section(capsys, mlp_export):
    assert inspect.main([str(mlp_export.root)]) == 0
    text = capsys.readouterr().out
    assert text.count("== ") == 3  # checkpoint, savedmodel train, savedmodel serve
    for section in ("-- meta info", "-- graph", "-- saver def", "-- collections",
                    "-- signatures", "-- asset files", "-- checkpoint variables"):
        assert section in text
    assert "global step: 10000" in text


@pytest.mark.parametrize("make_path, message", [
    (lambda tmp: tmp / "missing", "does not exist"),
    (lambda tmp: tmp, "no saved_model.pb"),
    (lambda tmp: (tmp / "junk.meta").write_bytes(b"\xff\xfe not a proto") and tmp / "junk.meta",
     "does not parse"),
])
def test_bad_path_exits_2_with_one_line(tmp_path, make_path, message):
    result = run("shared.inspect", make_path(tmp_path), timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr


@pytest.mark.parametrize("damage, message", [
    ("garbage_index", "too short to be an sstable"),
    ("missing_data", "No such file or directory"),
])
def test_a_damaged_checkpoint_exits_2_with_one_line_not_a_traceback(damage, message, capsys,
                                                                     tmp_path, linear_export):
    import shutil

    prefix = layout.latest_checkpoint(linear_export.root).path
    for path in prefix.parent.glob(f"{prefix.name}.*"):
        shutil.copy(path, tmp_path)
    copy = tmp_path / prefix.name
    if damage == "garbage_index":
        (tmp_path / f"{prefix.name}.index").write_bytes(b"garbage")
    else:
        next(tmp_path.glob(f"{prefix.name}.data-*")).unlink()
    with pytest.raises(SystemExit) as exit:
        inspect.main([str(copy)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1, err
    assert f"checkpoint {copy} cannot be read" in err and message in err
