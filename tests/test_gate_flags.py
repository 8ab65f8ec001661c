"""The model server's gate and label flags that had no test (issue 27): ``--regression_floor``,
``--gate_dataset`` and ``--allow_version_labels_for_unavailable_models``. Each is run both ways
against real servers: the same versions decided one way with the flag, the other without."""

from __future__ import annotations

import json

from harness.processes import free_ports
from harness.rest_client import RestClient
from tests.helpers import run_warm
from tests.test_gate_rules import GOOD, _single, decided, linear_base
from tests.test_model_config import entry, start, write_config
from tests.test_model_server import loaded


def _second_decision(tmp_path, intercept: float, *flags: str) -> dict:
    """Version 1 at the true line, version 2 at ``intercept``, under ``--max_regression=0.5``
    and ``flags``: the event that decided version 2."""
    versions, base = linear_base(tmp_path, {1: GOOD})
    server, _ = _single(tmp_path, base, "--max_regression=0.5", *flags)
    assert decided(server, 1)["event"] == "model_loaded"
    versions.publish(2, intercept)
    event = decided(server, 2)
    assert server.terminate() == 0, server.stderr
    versions.close()
    return event


def test_the_regression_floor_keeps_a_loss_near_zero_from_refusing_every_version(tmp_path):
    """A loss above ``live + R * max(live, floor)`` is refused. The live version sits on the
    true line (its loss is the data's noise, ~0.0025): an intercept 0.1 off (loss ~0.01) is
    refused under the default floor (1e-3, so the bound is ~0.003), and loaded with a floor
    of 1 (the bound is ~0.5)."""
    refused = _second_decision(tmp_path / "default", GOOD + 0.1)
    assert refused["event"] == "promotion_refused" and refused["loss"] > refused["live_loss"]
    loaded_ = _second_decision(tmp_path / "floor", GOOD + 0.1, "--regression_floor=1")
    assert loaded_["event"] == "model_loaded"


def test_the_gate_dataset_is_what_both_versions_are_scored_on(tmp_path):
    """``--gate_dataset`` names the data the candidate and the live version are scored on. On
    data whose noise swamps the model (noise 100: a loss of ~10,000 for any line), an
    intercept 1 off regresses by a rounding error and is loaded; on the versions' own data
    (noise 0.05) the same version is refused."""
    noisy = json.dumps({"name": "linear", "seed": 1, "noise": 100.0})
    refused = _second_decision(tmp_path / "own", GOOD + 1.0)
    assert refused["event"] == "promotion_refused" and refused["live_loss"] < 0.01
    loaded_ = _second_decision(tmp_path / "noisy", GOOD + 1.0, f"--gate_dataset={noisy}")
    assert loaded_["event"] == "model_loaded"


def test_a_label_at_a_version_that_is_nowhere_needs_the_allow_flag(tmp_path):
    """A label at a version neither loaded nor on disk stops the start (exit 2, one line),
    as TF Serving refuses it (server_core.cc, ``UpdateModelVersionLabelMap``: "not currently
    available for inference"); with ``--allow_version_labels_for_unavailable_models`` it is
    kept, answers NOT_FOUND until the version comes, and follows it once it loads."""
    versions, base = linear_base(tmp_path, {1: GOOD})
    config = tmp_path / "models.config"
    write_config(config, entry("m", base, "model_version_policy { all {} }", {"canary": 2}))
    result = run_warm("consumer.model_server", f"--model_config_file={config}",
                      f"--rest_api_port={free_ports(1)[0]}", "--port=0", "--work_dir",
                      tmp_path / "work-1")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, lines
    assert "version 2 of model m, which is not currently available" in lines[0], lines

    server, rest, _ = start(config, tmp_path, "--allow_version_labels_for_unavailable_models")
    loaded(server, base, 1)
    client = RestClient(rest)
    status, _, _ = client.call("POST", "/v1/models/m/labels/canary:predict",
                               {"instances": [[0.0]]})
    assert status in (404, 503), status  # no version 2 anywhere yet
    versions.publish(2, GOOD + 0.5)
    loaded(server, base, 2)
    status, headers, _ = client.call("POST", "/v1/models/m/labels/canary:predict",
                                     {"instances": [[0.0]]})
    assert (status, headers.get("x-model-version")) == (200, "2")
    client.close()
    assert server.terminate() == 0, server.stderr
    versions.close()
