"""Serve mode: a real server process, a real HTTP client, versions published while it serves."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time

import numpy as np
import pytest

from shared import commit, layout
from harness.rest_client import RestClient as Client
from tests.helpers import LinearVersions, Process, intercept_for

MIB = 1024 * 1024


def start_server(export_dir, work_dir, *extra) -> tuple[Process, int]:
    server = Process("consumer", "--mode", "serve", "--export-dir", export_dir, "--work-dir",
                     work_dir, "--port", "0", "--grpc-port", "0", *extra)
    serving = server.wait_for(lambda e: e["event"] == "serving", timeout=60)
    return server, serving["port"]


@pytest.fixture(scope="module")
def mlp_server(mlp_export, tmp_path_factory):
    """A server on a copy of the mlp's last SavedModel (step 10000)."""
    root = tmp_path_factory.mktemp("served") / "exports"
    commit.claim(root, "mlp")
    source = layout.latest_savedmodel(mlp_export.root)
    staging = commit.staging_dir(root, source.step)
    shutil.copytree(source.path, staging, dirs_exist_ok=True)
    commit.commit_dir(staging, layout.savedmodel_path(root, source.step))
    server, port = start_server(root, root.parent / "work")
    server.wait_for(lambda e: e["event"] == "model_loaded", timeout=60)
    client = Client(port)
    yield server, client, port
    client.close()
    assert server.terminate() == 0, server.stderr


def test_status_and_versions(mlp_server):
    _, client, _ = mlp_server
    available = {"model_version_status": [{"version": "10000", "state": "AVAILABLE",
                                           "status": {"error_code": "OK", "error_message": ""}}]}
    for path in ("/v1/models/mlp", "/V1/MODELS/mlp/VERSIONS/10000"):  # paths: any case
        status, _, body = client.call("GET", path)
        assert (status, body) == (200, available)
    status, _, body = client.call("GET", "/v1/models/mlp/versions/500")
    assert (status, body) == (404, {"error": "Could not find version 500 of model mlp"})
    for name in ("other", "MLP"):  # model names: exactly, as TF Serving looks them up
        status, _, body = client.call("GET", f"/v1/models/{name}")
        assert (status, body) == (404, {"error": f"Could not find any versions of model {name}"})


def test_metadata_lists_the_serving_signature(mlp_server):
    _, client, _ = mlp_server
    for path in ("/v1/models/mlp/metadata", "/v1/models/mlp/versions/10000/metadata"):
        status, _, body = client.call("GET", path)
        assert status == 200
        assert body["model_spec"] == {"name": "mlp", "signature_name": "", "version": "10000"}
        signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["method_name"] == "tensorflow/serving/predict"
        features = signature["inputs"]["features"]
        assert features["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in features["tensor_shape"]["dim"]] == ["-1", "28"]
        assert signature["outputs"]["classes"]["dtype"] == "DT_STRING"


def test_predict_row_and_columnar_formats_agree_and_return_class_names(mlp_server):
    _, client, _ = mlp_server
    rows = np.random.default_rng(1).random((3, 28)).round(4).tolist()
    status, headers, by_row = client.call("POST", "/v1/models/mlp:predict", {"instances": rows})
    assert status == 200 and headers["x-model-version"] == "10000"
    predictions = by_row["predictions"]
    assert len(predictions) == 3 and set(predictions[0]) == {"classes", "probabilities"}
    for prediction in predictions:
        assert prediction["classes"] == f"class_{int(np.argmax(prediction['probabilities']))}"
        assert sum(prediction["probabilities"]) == pytest.approx(1.0, abs=1e-5)

    status, headers, by_column = client.call(
        "POST", "/v1/models/mlp/versions/10000:predict",
        {"signature_name": "serving_default", "inputs": {"features": rows}})
    assert status == 200 and headers["x-model-version"] == "10000"
    outputs = by_column["outputs"]
    assert outputs["classes"] == [p["classes"] for p in predictions]
    assert np.allclose(outputs["probabilities"], [p["probabilities"] for p in predictions])

    status, _, named_rows = client.call("POST", "/v1/models/mlp:predict",
                                        {"instances": [{"features": row} for row in rows]})
    assert status == 200 and named_rows == by_row


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "JSON Parse error: Missing a name for object member. at offset: 1"),
    ({"instances": [[0.0] * 28], "inputs": [[0.0] * 28]}, 400, "only one of"),
    ({"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
    ({"instances": [[0.0] * 27]}, 400, "Matrix size-incompatible"),  # TF's own check, as in C++
    ({"instances": [["a"] * 28]}, 400, "Type: String is not of expected type: float"),
    ({"instances": [[0.0] * 28, [0.0]]}, 400, "Expecting tensor size: 28 but got: 1"),
    ({"instances": [[0.0] * 28], "signature_name": "nope"}, 400,
     'Serving signature name: "nope" not found in signature def'),
])
def test_bad_predict_requests_get_400_and_hurt_nobody(mlp_server, body, status, message):
    _, client, _ = mlp_server
    got, _, answer = client.call("POST", "/v1/models/mlp:predict", body)
    assert got == status and message in answer["error"]
    ok, headers, _ = client.call("POST", "/v1/models/mlp:predict", {"instances": [[0.5] * 28]})
    assert ok == 200 and headers["x-model-version"] == "10000"


def test_unknown_model_or_version_gets_404_and_a_huge_body_413(mlp_server):
    _, client, port = mlp_server
    status, _, body = client.call("POST", "/v1/models/nope:predict", {"instances": [[0.5] * 28]})
    assert status == 404 and "error" in body
    status, _, body = client.call("POST", "/v1/models/mlp/versions/1:predict",
                                  {"instances": [[0.5] * 28]})
    assert status == 404 and "error" in body
    # Declare a 17 MiB body: the server refuses it from the header, before reading it.
    raw = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    raw.putrequest("POST", "/v1/models/mlp:predict")
    raw.putheader("Content-Length", str(17 * MIB))
    raw.endheaders()
    response = raw.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    raw.close()


def test_prometheus_metrics_count_requests_and_show_the_live_version(mlp_server):
    _, client, _ = mlp_server
    client.call("POST", "/v1/models/mlp:predict", {"instances": [[0.5] * 28]})
    status, headers, text = client.call("GET", "/monitoring/prometheus/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = text.decode()
    assert 'handoff_live_version{model="mlp"} 10000.0' in text
    assert 'handoff_version_available{model="mlp",version="10000"} 1.0' in text
    ok = 'protocol="rest",version="10000"}'
    assert f'handoff_requests_total{{code="200",endpoint="predict",model="mlp",{ok}' in text
    assert 'handoff_requests_total{code="400",endpoint="predict",model="mlp",protocol="rest",' \
           'version=""}' in text  # refused before a version was taken: no version
    assert ('handoff_request_latency_seconds_bucket{endpoint="predict",le="0.005",model="mlp",'
            'protocol="rest",version="10000"}') in text
    assert 'handoff_versions_loaded_total{model="mlp"} 1.0' in text


def test_listens_on_loopback_only_by_default(mlp_server):
    server, _, port = mlp_server
    assert server.named("serving")[0]["host"] == "127.0.0.1"
    with open("/proc/net/tcp") as table:
        listening = [line.split()[1] for line in table.readlines()[1:]
                     if line.split()[3] == "0A"]  # state LISTEN
    assert f"0100007F:{port:04X}" in listening  # 127.0.0.1, little-endian hex as the kernel shows it


# -- swaps under load ----------------------------------------------------------------------------


def answered_by(results: list[list], step: int, timeout: float = 30) -> None:
    """Wait until every client has had a new answer from version ``step``."""
    counts = [len(seen) for seen in results]
    deadline = time.monotonic() + timeout
    while not all(any(int(h.get("x-model-version", 0)) == step for _, h, _ in seen[n:])
                  for seen, n in zip(results, counts)):
        assert time.monotonic() < deadline, f"not every client was answered by {step}"
        time.sleep(0.01)


def test_swaps_under_load_fail_no_request_and_each_answer_matches_its_version(tmp_path):
    root = tmp_path / "exports"
    root.mkdir()
    server, port = start_server(root, tmp_path / "work", "--max-regression", "0.5")
    clients, stop, results = [], threading.Event(), []
    try:
        client = Client(port)
        status, _, body = client.call("GET", "/v1/models/linear")
        assert status == 503 and "ready" in body["error"]  # nothing loaded yet
        client.close()

        versions = LinearVersions(root)
        versions.publish(1, intercept_for(1))
        server.wait_for(lambda e: e["event"] == "model_loaded" and e["step"] == 1)

        def hammer(client: Client, seen: list) -> None:
            while not stop.is_set():
                try:
                    seen.append(client.predict("linear", {"instances": [[0.0], [1.0]]}))
                except OSError as err:  # a dropped connection is a failed request too
                    seen.append((0, {}, repr(err)))

        threads = []
        for _ in range(4):
            clients.append(Client(port))
            results.append([])
            threads.append(threading.Thread(target=hammer, args=(clients[-1], results[-1])))
            threads[-1].start()
        last = 40
        for step in range(2, last + 1):
            versions.publish(step, intercept_for(step))
            server.wait_for(lambda e, s=step: e["event"] == "model_loaded" and e["step"] == s)
        answered_by(results, last)  # the clients meet the last version too

        # The gate: a worse version and a NaN one are refused; the live one keeps answering.
        versions.publish(last + 1, 10.0)
        refused = server.wait_for(lambda e: e["event"] == "promotion_refused")
        assert refused["step"] == last + 1 and "above the limit" in refused["reason"]
        versions.publish(last + 2, float("nan"))
        refused = server.wait_for(lambda e: e["event"] == "promotion_refused")
        assert refused["step"] == last + 2 and "non-finite" in refused["reason"]
        answered_by(results, last)  # and answers after the refusals come from the live one
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        versions.close()
    finally:
        stop.set()
        for client in clients:
            client.close()
        code = server.terminate()
    assert code == 0, server.stderr

    swaps = [e["step"] for e in server.named("model_loaded")]
    assert swaps == list(range(1, last + 1))
    answered = 0
    for seen in results:
        assert seen, "a client got no answer"
        steps = []
        for status, headers, body in seen:
            assert status == 200, body
            step = int(headers["x-model-version"])
            zero, one = body["predictions"]
            # The answer came from the version its header names, never a half-restored one.
            assert zero == [pytest.approx(intercept_for(step), abs=1e-12)]
            assert one == [pytest.approx(1.5 + intercept_for(step), abs=1e-12)]
            steps.append(step)
        assert steps == sorted(steps), "a client saw the version go backwards"
        assert steps[-1] == last  # gated versions never answered
        answered += len(seen)
    assert answered > 200
    assert server.named("consumer_stopped")


def test_a_request_holding_a_handle_keeps_its_version_open_across_a_swap(mlp_export):
    """The swap's invariant, in one process with real sessions: a request runs to its end on its
    version, and that version's session becomes the standby for a warm restore only then."""
    from consumer import loader
    from consumer.manager import Manager

    older, newer = layout.savedmodel_versions(mlp_export.root)[-2:]
    features = np.full((1, 28), 0.5, np.float32)
    manager = Manager()
    manager.add(loader.load(older, loader.SERVE))
    with manager.handle() as held:
        old = held.loaded
        graph = old.imported
        ready = loader.load(newer, loader.SERVE, graph)
        assert ready.load == loader.WARM and ready.session is not old.session
        manager.add(ready)  # the new one goes live now, the old one leaves the manager
        manager.remove(older.step)
        assert manager.live.version.step == newer.step and manager.steps() == [newer.step]
        # the request in flight still runs on its own version, whose session is not idle
        name = old.signatures["serving_default"].inputs["features"].name
        old.run({name: features}, ("probabilities:0",))
        assert graph._idle == [] and not old.session._closed
    assert graph._idle == [old.session]  # its last request ended: now it is the standby
    with manager.handle() as servable:
        assert servable.step == newer.step
    manager.close()
    graph.retire()
    assert manager.live is None and old.session._closed and ready.session._closed
