"""The Open Inference Protocol with more real clients (issue 30): KServe's SDK (its own venv),
MLServer's REST endpoint tests ported to a running server, the model repository extension
through tritonclient (REST and gRPC, Triton's messages), and a hot swap under OIP load.

MLServer's tests/rest/test_endpoints.py (SeldonIO/MLServer at 021d22ab) is ported below where
it tests the protocol, with its fixtures as SavedModels (``sum-model``: input-0 summed into
output-0; its request tests/testdata/inference-request.json). Its tests of MLServer itself are
left out: test_openapi, test_docs, test_model_openapi, test_model_docs (MLServer's OpenAPI
pages), test_generate, test_generate_stream (its generate extension), test_infer_headers
(its header echo and CloudEvents headers), test_infer_invalid_datatype_error (FastAPI's 422
body; ours is 400 {"error"}); and of test_metadata, the name "mlserver" and an empty extension
list, of test_model_metadata the values of MLServer's model-settings.json, and the version
"v1.2.3" (a SavedModel's versions are numbers: "1" here).
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from harness.processes import free_ports
from tests import oip_models, tfs_models
from tests.helpers import REPO, warm
from tests.test_model_server import config_file, loaded

KSERVE_PYTHON = Path(REPO) / ".venv-kserve" / "bin" / "python"
INFERENCE_REQUEST = {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "INT32",
                                 "data": [1, 2, 3]}]}


def start(*args):
    rest, grpc_port = free_ports(2)
    process = warm("consumer.model_server", f"--rest_api_port={rest}", f"--port={grpc_port}",
                   *args)
    process.wait_for(lambda e: e["event"] == "serving", timeout=60)
    process.rest, process.grpc = f"localhost:{rest}", f"localhost:{grpc_port}"
    return process


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("oip_clients")
    builds = {"simple": oip_models.simple, "sum-model": oip_models.sum_model}
    half = tfs_models.HalfPlusTwo()
    builds["half"] = lambda path: half.save(path, b=1.0)
    for name, build in builds.items():
        (root / name).mkdir()
        tfs_models.publish(root / name, 1, build)
    process = start(config_file(root / "models.config", {n: root / n for n in builds}),
                    f"--work_dir={root / 'work'}")
    for name in builds:
        loaded(process, root / name, 1)
    process.root, process.half = root, half
    yield process
    half.close()
    assert process.terminate() == 0, process.stderr
    assert not process.named("request_failed"), process.named("request_failed")


def url(server, path: str) -> str:
    return f"http://{server.rest}{path}"


@pytest.mark.skipif(not KSERVE_PYTHON.exists(), reason="no .venv-kserve: `make kserve-venv` builds it")
def test_kserve_clients(server):
    """InferenceRESTClient (v2 JSON and binary, and v1 on TF Serving's REST) and
    InferenceGRPCClient infer ``simple``, run unchanged in KServe's own venv."""
    run = subprocess.run([str(KSERVE_PYTHON), str(Path(REPO) / "tests" / "kserve_clients.py"),
                          server.rest, server.grpc], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    a, b = np.arange(16)[None], np.ones((1, 16), int)
    for key in ("rest_json", "rest_binary", "grpc", "rest_v1"):
        assert got[key] == {"OUTPUT0": (a + b).tolist(), "OUTPUT1": (a - b).tolist()}, key
    assert all(got[k] for k in ("rest_live", "rest_ready", "rest_model_ready", "grpc_ready",
                                "grpc_model_ready"))


# -- MLServer's tests/rest/test_endpoints.py, ported -------------------------------------------

def test_live(server):
    assert requests.get(url(server, "/v2/health/live"), timeout=5).status_code == 200


def test_ready(server):
    assert requests.get(url(server, "/v2/health/ready"), timeout=5).status_code == 200


def test_model_ready(server):
    answer = requests.get(url(server, "/v2/models/sum-model/versions/1/ready"), timeout=5)
    assert answer.status_code == 200


def test_metadata(server):
    metadata = requests.get(url(server, "/v2"), timeout=5).json()
    assert set(metadata) == {"name", "version", "extensions"}
    assert metadata["extensions"] == ["binary_tensor_data", "model_repository"]


def test_model_metadata(server):
    metadata = requests.get(url(server, "/v2/models/sum-model"), timeout=5).json()
    assert metadata["name"] == "sum-model" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "INT32", "shape": [-1, -1]}]
    assert metadata["outputs"] == [{"name": "output-0", "datatype": "INT32", "shape": [1]}]


@pytest.mark.parametrize("version", ["1", None])
def test_infer(server, version):
    path = "/v2/models/sum-model" + (f"/versions/{version}" if version else "") + "/infer"
    answer = requests.post(url(server, path), json=INFERENCE_REQUEST, timeout=5)
    assert answer.status_code == 200
    outputs = answer.json()["outputs"]
    assert len(outputs) == 1 and outputs[0]["data"] == [6]


def test_infer_error(server):
    answer = requests.post(url(server, "/v2/models/my-model/versions/v0/infer"),
                           json=INFERENCE_REQUEST, timeout=5)
    assert answer.status_code == 404
    assert answer.json()["error"] == "Model my-model with version v0 not found"


def test_model_repository_index(server):
    answer = requests.post(url(server, "/v2/repository/index"), json={"ready": None}, timeout=5)
    assert answer.status_code == 200
    assert sorted(row["name"] for row in answer.json()) == ["half", "simple", "sum-model"]


def test_model_repository_unload_and_load(server):
    """MLServer's test_model_repository_unload and _load, in one: unload, 404; load, 200."""
    answer = requests.post(url(server, "/v2/repository/models/sum-model/unload"), timeout=10)
    assert answer.status_code == 200
    assert requests.get(url(server, "/v2/models/sum-model"), timeout=5).status_code == 404
    answer = requests.post(url(server, "/v2/repository/models/sum-model/load"), timeout=60)
    assert answer.status_code == 200
    assert requests.get(url(server, "/v2/models/sum-model"), timeout=5).status_code == 200


def test_model_repository_load_error(server):
    answer = requests.post(url(server, "/v2/repository/models/my-model/load"), timeout=5)
    assert answer.status_code == 404
    assert answer.json()["error"] == "Model my-model not found"


# -- the repository through tritonclient -------------------------------------------------------

@pytest.mark.parametrize("module", [httpclient, grpcclient], ids=["http", "grpc"])
def test_repository_through_tritonclient(server, module):
    client = module.InferenceServerClient(server.rest if module is httpclient else server.grpc)
    index = client.get_model_repository_index() if module is httpclient else \
        client.get_model_repository_index(as_json=True)["models"]
    assert {row["name"] for row in index if row["state"] == "READY"} >= {"simple", "half"}
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    client.load_model("simple")
    assert client.is_model_ready("simple")
    with pytest.raises(InferenceServerException):
        client.load_model("my-model")
    client.close()


def test_repository_refused_without_a_config_file(server):
    """An operator's act, as gRPC's reload: a server run from --model_base_path refuses it and
    does not advertise it."""
    other = start("--model_name=simple", f"--model_base_path={server.root / 'simple'}",
                  f"--work_dir={server.root / 'work2'}")
    try:
        assert requests.get(f"http://{other.rest}/v2", timeout=5).json()["extensions"] == [
            "binary_tensor_data"]
        answer = requests.post(f"http://{other.rest}/v2/repository/models/simple/unload",
                               timeout=5)
        assert answer.status_code == 400 and "--model_config_file" in answer.json()["error"]
        with pytest.raises(InferenceServerException) as caught:
            grpcclient.InferenceServerClient(other.grpc).unload_model("simple")
        assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"
    finally:
        assert other.terminate() == 0, other.stderr


# -- a hot swap under OIP load -----------------------------------------------------------------

def oip_load(server, module, stop: threading.Event, answers: list, failures: list) -> None:
    """Ask ``half`` for y(x=0) = b = its version, until ``stop``; every answer is checked
    against the version that gave it."""
    client = module.InferenceServerClient(server.rest if module is httpclient else server.grpc)
    tensor = module.InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.zeros(1, np.float32))
    while not stop.is_set():
        try:
            result = client.infer("half", [tensor])
            response = result.get_response()
            version = response["model_version"] if module is httpclient else \
                response.model_version
            y = float(result.as_numpy("y")[0])
            answers.append(version)
            if y != float(version):
                failures.append((version, y))
        except Exception as err:  # every error is a failed request here
            failures.append(repr(err))
    client.close()


def test_hot_swap_under_oip_load(server):
    stop, answers, failures = threading.Event(), [], []
    clients = [threading.Thread(target=oip_load, args=(server, module, stop, answers, failures))
               for module in (httpclient, grpcclient, httpclient, grpcclient)]
    for thread in clients:
        thread.start()
    try:
        for step in (2, 3, 4):
            tfs_models.publish(server.root / "half", step,
                               lambda p, s=step: server.half.save(p, b=float(s)))
            loaded(server, server.root / "half", step)
            seen = len(answers)
            while len(answers) < seen + 8 and not failures:  # some answers from this version
                threading.Event().wait(0.01)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
    assert failures == [], failures[:5]
    assert {"1", "4"} <= set(answers), sorted(set(answers))
    assert answers.count("4") > 0 and len(answers) > 50
