"""The promotion gate's rules against real servers (issue 27): which version a candidate is
compared with (an older one kept by a policy replaces nothing; after a restart, a served version
that has left the disk is no reference), labels and the gate (a label may not point at a
refused version; one at a version still loading answers UNAVAILABLE), the status of a version
whose rewrite was refused, and gate.json written by the server and an operator at once.
Real server processes, real TensorFlow, real HTTP and gRPC clients, real files."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc

from harness.processes import free_ports
from harness.rest_client import RestClient
from tests import tfs_models
from tests.helpers import LinearVersions, Process, warm
from tests.test_grpc import X, Stubs, _predict
from tests.test_model_config import answer, entry, start, write_config
from tests.test_model_server import _predict_request, loaded

from tensorflow_serving.apis import model_management_pb2  # noqa: E402

GOOD, BAD = -3.0, 5.0  # intercepts of LinearVersions: loss ~0 and ~64 on the linear data


def linear_base(tmp_path, steps: dict[int, float]) -> tuple[LinearVersions, object]:
    """Our-contract versions (scored by the gate) in a TF Serving base path: ``steps`` maps a
    version to its intercept."""
    export = tmp_path / "exports"
    versions = LinearVersions(export, keep=0)
    for step, intercept in steps.items():
        versions.publish(step, intercept)
    return versions, export / "savedmodels"


def decided(server, step: int, timeout: float = 60) -> dict:
    return server.wait_seen(lambda e: e["event"] in ("model_loaded", "promotion_refused")
                            and e["step"] == step, timeout=timeout)


def refusals(tmp_path, model: str) -> dict:
    path = tmp_path / "work" / model / "gate.json"
    return json.loads(path.read_text())["refused"] if path.exists() else {}


def status(client: RestClient, model: str) -> dict:
    body = client.call("GET", f"/v1/models/{model}")[2]
    return {int(s["version"]): (s["state"], s["status"]["error_code"])
            for s in body["model_version_status"]}


def reload_request(name: str, base, versions: list[int], labels: dict):
    request = model_management_pb2.ReloadConfigRequest()
    config = request.config.model_config_list.config.add(
        name=name, base_path=str(base), model_platform="tensorflow")
    config.model_version_policy.specific.versions.extend(versions)
    for label, version in labels.items():
        config.version_labels[label] = version
    return request


def reload_code(stubs: Stubs, request) -> tuple[str, str]:
    try:
        response = stubs.models.HandleReloadConfigRequest(request, timeout=60)
    except grpc.RpcError as err:
        return err.code().name, err.details()
    return ("OK" if response.status.error_code == 0 else str(response.status.error_code),
            response.status.error_message)


def test_an_older_version_kept_by_the_policy_is_not_gated_against_the_live_one(tmp_path):
    """``latest { num_versions: 2 }`` keeps version 1, worse than the live 2: it replaces
    nothing, so it is loaded (checked for warm-up and NaN only), not refused for good."""
    versions, base = linear_base(tmp_path, {1: BAD, 2: GOOD})
    config = tmp_path / "models.config"
    write_config(config, entry("m", base, "model_version_policy { latest { num_versions: 2 } }"))
    server, rest, _ = start(config, tmp_path, "--max_regression=0.5")
    assert decided(server, 2)["event"] == "model_loaded"
    assert decided(server, 1)["event"] == "model_loaded", server.named("promotion_refused")
    client = RestClient(rest)
    status_, headers, body = client.call("POST", "/v1/models/m/versions/1:predict",
                                         {"instances": [[0.0]]})
    assert (status_, headers["x-model-version"]) == (200, "1") and abs(
        body["predictions"][0][0] - BAD) < 1e-6
    assert status(client, "m") == {2: ("AVAILABLE", "OK"), 1: ("AVAILABLE", "OK")}
    assert refusals(tmp_path, "m") == {}  # nothing persisted against it
    client.close()
    assert server.terminate() == 0, server.stderr
    versions.close()


def test_a_restart_whose_served_version_left_the_disk_serves_what_is_there(tmp_path):
    """The version that served last (1) is deleted while no server runs; version 2, worse than
    1 was, is all there is: it serves (compared to nothing, logged once) rather than the model
    going dark with a version on disk."""
    versions, base = linear_base(tmp_path, {1: GOOD})
    server, rest = _single(tmp_path, base, "--max_regression=0.5")
    assert decided(server, 1)["event"] == "model_loaded"
    assert server.terminate() == 0, server.stderr
    served = json.loads((tmp_path / "work" / "m" / "gate.json").read_text())["served"]
    assert served["step"] == 1
    (base / "1").rename(tmp_path / "gone-1")
    versions.publish(2, GOOD + 1.0)  # loss ~1: refused if measured against 1's ~0

    server, rest = _single(tmp_path, base, "--max_regression=0.5")
    assert decided(server, 2)["event"] == "model_loaded", server.named("promotion_refused")
    gone = server.named("gate_reference_gone")
    assert len(gone) == 1 and gone[0]["step"] == 1 and gone[0]["candidate_step"] == 2
    client = RestClient(rest)
    status_, headers, _ = client.call("POST", "/v1/models/m:predict", {"instances": [[0.0]]})
    assert (status_, headers["x-model-version"]) == (200, "2")
    versions.publish(3, BAD)  # and 2 is the reference now: a regression is still refused
    assert decided(server, 3)["event"] == "promotion_refused"
    client.close()
    assert server.terminate() == 0, server.stderr
    versions.close()


def _single(tmp_path, base, *extra) -> tuple[Process, int]:
    """A server of one model, m, at ``base`` (``--model_base_path``); its REST port."""
    rest, port = free_ports(2)
    server = warm("consumer.model_server", f"--model_base_path={base}", "--model_name=m",
                  f"--rest_api_port={rest}", f"--port={port}", "--work_dir", tmp_path / "work",
                  *extra)
    server.wait_for(lambda e: e["event"] == "serving")
    return server, rest


def test_a_label_at_a_refused_version_is_refused_as_tf_serving_refuses_it(tmp_path):
    """TF Serving lets a label point only at an available version and refuses the reload with
    FAILED_PRECONDITION otherwise (tensorflow_serving/model_servers/server_core.cc,
    ``ServerCore::UpdateModelVersionLabelMap``, lines 549-583 at 9d981c5, called from
    ``ReloadConfig`` line 514). We also let it point at a version on disk the policy is about
    to load; a version the gate refused is never going to be available, so it is refused."""
    versions, base = linear_base(tmp_path, {1: GOOD})
    config = tmp_path / "models.config"
    write_config(config, entry("m", base))
    server, rest, port = start(config, tmp_path, "--max_regression=0.5")
    assert decided(server, 1)["event"] == "model_loaded"
    versions.publish(2, BAD)
    assert decided(server, 2)["event"] == "promotion_refused"
    stubs = Stubs(port)
    code, message = reload_code(stubs, reload_request("m", base, [1, 2], {"stable": 2}))
    assert code == "FAILED_PRECONDITION" and message == (
        "Request to assign label to version 2 of model m, which is not currently available "
        "for inference"), (code, message)
    client = RestClient(rest)
    status_, body = answer(client, "/v1/models/m/labels/stable:predict")
    assert (status_, body) == (400, {"error": "Unrecognized servable version label: stable"})
    assert reload_code(stubs, reload_request("m", base, [1, 2], {"stable": 1}))[0] == "OK"
    status_, headers, _ = client.call("POST", "/v1/models/m/labels/stable:predict",
                                      {"instances": [[0.0]]})
    assert (status_, headers["x-model-version"]) == (200, "1")
    client.close()
    stubs.close()
    assert server.terminate() == 0, server.stderr
    versions.close()


SPIN = 60_000  # loop turns per request of the slow version: its warm-up takes ~0.4 s


def test_a_label_at_a_version_still_loading_answers_unavailable_not_not_found(tmp_path):
    """A label moved to a version on disk that the new policy loads: until it is ready a
    request by that label answers UNAVAILABLE (503, retryable) and the version's status says
    START (TF Serving's state for a version aspired to, not loading yet); NOT_FOUND would tell
    a client to give up. The reload also asks for version 3, whose warm-up request runs a long
    loop: the loop loads it first (newest first), so version 2 waits while it warms up."""
    base = tmp_path / "m"
    base.mkdir()
    fast, slow = tfs_models.HalfPlusTwo(), tfs_models.HalfPlusTwo(spin=SPIN)
    for step in (1, 2):
        tfs_models.publish(base, step, lambda p, s=step: fast.save(p, b=float(s)))

    def slow_version(path):
        slow.save(path, b=3.0)
        tfs_models.warmup_records(path, [_predict_request(1.0)])
    tfs_models.publish(base, 3, slow_version)
    config = tmp_path / "models.config"
    write_config(config, entry("m", base, "model_version_policy { specific { versions: 1 } }",
                               {"stable": 1}))
    server, rest, port = start(config, tmp_path)
    loaded(server, base, 1)
    stubs, client = Stubs(port), RestClient(rest)
    assert reload_code(stubs, reload_request("m", base, [1, 2, 3], {"stable": 2}))[0] == "OK"
    status_, headers, body = client.call("POST", "/v1/models/m/labels/stable:predict",
                                         {"instances": [1.0]})
    assert status_ == 503 and "not ready yet" in body["error"], (status_, body)
    try:
        stubs.predict.Predict(_predict("m", label="stable", x=X), timeout=10)
        raise AssertionError("answered before version 2 was ready")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert status(client, "m")[2] == ("START", "OK")
    assert not server.named("model_loaded")[1:], "versions 2, 3 loaded too soon for this test"
    loaded(server, base, 2)
    assert answer(client, "/v1/models/m/labels/stable:predict") == (200, (2, 2.5))
    client.close()
    stubs.close()
    assert server.terminate() == 0, server.stderr
    fast.close()
    slow.close()


def test_a_refused_rewrite_leaves_the_status_of_the_version_that_answers(tmp_path):
    """Version 1 written anew with a warm-up that fails: the rewrite is refused and the old
    version 1 keeps answering, so its status stays AVAILABLE (not END)."""
    base = tmp_path / "m"
    base.mkdir()
    tfs_models.publish(base, 1, lambda p: tfs_models.half_plus_two(p, b=1.0))
    server, rest = _single(tmp_path, base)
    loaded(server, base, 1)

    def broken(path):
        tfs_models.half_plus_two(path, b=7.0)
        tfs_models.warmup_records(path, [_predict_request(1.0, signature="no_such_signature")])
    broken(base / ".staging-1")
    (base / "1").rename(tmp_path / "old-1")
    (base / ".staging-1").rename(base / "1")
    refused = server.wait_for(lambda e: e["event"] == "promotion_refused")
    assert refused["step"] == 1 and "warm-up request 1" in refused["reason"]
    client = RestClient(rest)
    assert status(client, "m") == {1: ("AVAILABLE", "OK")}
    assert answer(client, "/v1/models/m:predict") == (200, (1, 1.5))  # the old one answers
    client.close()
    assert server.terminate() == 0, server.stderr


WRITERS = 6  # operators' accept commands racing the server's saves


def test_an_operators_accepts_race_the_servers_saves_and_none_is_lost(tmp_path):
    """gate.json has two writers: the server (a refusal, a served version) and an operator's
    ``python -m consumer.decisions accept``. Real command processes, started together, accept
    one refused version each while this process, as the server does, refuses one new version
    after another from what it read before they ran: every accept and every refusal is in the
    file at the end (a lock and a merge, not the last writer's copy)."""
    from consumer.decisions import DECISIONS, Decisions

    path = tmp_path / DECISIONS
    server = Decisions(path)
    for step in range(1, WRITERS + 1):
        server.refused[f"/m/{step}@1.0"] = {"step": step, "reason": "regressed"}
    server.save()
    server.reload()  # the server's rescan: what it holds from here on is what it read now
    operators = [subprocess.Popen([sys.executable, "-m", "consumer.decisions", "--work-dir",
                                   tmp_path, "accept", str(step)], stderr=subprocess.PIPE)
                 for step in range(1, WRITERS + 1)]
    step = WRITERS
    while any(p.poll() is None for p in operators) or step < WRITERS + 30:
        step += 1  # the server refusing versions meanwhile, each one saved
        server.refused[f"/m/{step}@1.0"] = {"step": step, "reason": "regressed"}
        server.save()
    for operator in operators:
        assert operator.wait(timeout=60) == 0, operator.stderr.read()
        operator.stderr.close()
    saved = json.loads(path.read_text())
    assert sorted(saved["accepted"]) == sorted(f"/m/{s}@1.0" for s in range(1, WRITERS + 1))
    assert len(saved["refused"]) == step
    assert server.reload()  # the accepts its saves merged in are news to its loop
    assert server.accepted == {f"/m/{s}@1.0" for s in range(1, WRITERS + 1)}
    assert not server.reload()
