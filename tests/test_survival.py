"""The model server never dies from one model's, one file's or one reload's trouble (issue 26).

Each test makes the trouble for real (a reload that replaces or empties the config, a symlink
loop, a FIFO, a broken or half-copied version, a warm-up that asks for 8 TB, a work dir past its
file-size limit) against a real server process, while a probe asks the live version every 50 ms:
the probe gets every answer, and the server stops only at SIGTERM, with exit 0.
"""

from __future__ import annotations

import os
import resource
import shutil
import threading
import time

import grpc

from harness.processes import free_ports
from harness.rest_client import RestClient
from tests import tfs_models
from tests.helpers import Process, warm
from tests.test_model_server import config_file, loaded


def start(*args) -> tuple[Process, int, int]:
    rest, grpc_port = free_ports(2)
    server = warm("consumer.model_server", f"--rest_api_port={rest}", f"--port={grpc_port}",
                  *args)
    server.wait_for(lambda e: e["event"] == "serving", timeout=60)
    return server, rest, grpc_port


class Probe:
    """Asks one model for y(x=1) every 50 ms and keeps every answer that was not a 200."""

    def __init__(self, port: int, model: str) -> None:
        self.port, self.model = port, model
        self.failures: list = []
        self.answers = 0
        self.versions: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        client = RestClient(self.port, timeout=10)
        while not self.stop.wait(0.05):
            try:
                status, headers, body = client.predict(self.model, {"instances": [1.0]})
            except Exception as err:  # a dropped connection, a body that is not JSON
                self.failures.append(repr(err))
                continue
            self.answers += 1
            version = headers.get("x-model-version")
            if status != 200 or version is None:
                self.failures.append((status, body, version))
            elif not self.versions or self.versions[-1] != version:
                self.versions.append(version)
        client.close()

    def wait_for_version(self, version: str, timeout: float = 10) -> None:
        """Until an answer from ``version`` has come (a swap can take a few ms in all)."""
        deadline = time.monotonic() + timeout
        while version not in self.versions:
            assert time.monotonic() < deadline, (version, self.versions, self.failures)
            time.sleep(0.01)

    def finish(self) -> list:
        self.stop.set()
        self.thread.join(timeout=30)
        return self.failures


def _reload(port: int, models: dict) -> grpc.RpcError | None:
    """gRPC's HandleReloadConfigRequest with these models (name -> base path); its error."""
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.SetInParent()  # an empty list is still a list
    for name, base in models.items():
        request.config.model_config_list.config.add(name=name, base_path=str(base),
                                                    model_platform="tensorflow")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, timeout=60)
        except grpc.RpcError as err:
            return err
    return None


def _inotify_instances(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
        except OSError:
            pass
    return count


def test_reloads_replace_empty_and_move_models_and_the_server_serves_on(tmp_path):
    """serving_config.md's "model A replaced by model B", an empty config (over gRPC, and a file
    caught empty while rewritten in place), a reload naming a missing base path, and a base path
    moved: before, each ended the server with exit 0 within seconds. TF Serving takes no action
    on an empty config (server_core.cc, ReloadConfig: "Taking no action for empty config")."""
    versions = tfs_models.HalfPlusTwo()
    bases = {name: tmp_path / name for name in ("keep", "a", "b", "c", "moved")}
    for name, b in (("keep", 1.0), ("a", 10.0), ("b", 20.0)):
        bases[name].mkdir()
        tfs_models.publish(bases[name], 1, lambda p, b=b: versions.save(p, b=b))
    bases["moved"].mkdir()
    tfs_models.publish(bases["moved"], 2, lambda p: versions.save(p, b=2.0))
    path = tmp_path / "models.config"
    flag = config_file(path, {"keep": bases["keep"], "a": bases["a"]})
    server, port, grpc_port = start(flag, "--model_config_file_poll_wait_seconds=1",
                                    "--work_dir", tmp_path / "work")
    loaded(server, bases["keep"], 1)
    loaded(server, bases["a"], 1)
    probe = Probe(port, "keep")
    client = RestClient(port)
    try:
        assert _reload(grpc_port, {}) is None  # no models: no action, answered OK
        server.wait_seen(lambda e: e["event"] == "config_empty")
        assert client.predict("a", {"instances": [1.0]})[0] == 200

        text = path.read_text()
        path.write_text("")  # an editor's in-place rewrite, caught between its two writes
        server.wait_for(lambda e: e["event"] == "config_empty", timeout=10)
        path.write_text(text)
        assert client.predict("a", {"instances": [1.0]})[0] == 200

        started = time.monotonic()
        error = _reload(grpc_port, {"keep": bases["keep"], "a": bases["a"], "c": bases["c"]})
        assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND, error
        assert "does not exist" in error.details()
        assert time.monotonic() - started < 10  # it was UNKNOWN after 30 s, then the exit
        bases["c"].mkdir()
        tfs_models.publish(bases["c"], 1, lambda p: versions.save(p, b=30.0))
        loaded(server, bases["c"], 1, timeout=30)

        # "A replaced by B" and keep moved to a new base path, in one edit of the file
        config_file(path, {"keep": bases["moved"], "b": bases["b"]})
        loaded(server, bases["b"], 1, timeout=30)
        server.wait_seen(lambda e: e["event"] == "model_moved" and e["model"] == "keep",
                        timeout=30)
        time.sleep(1.5)  # the old code exited 0 once the models it started with had ended
        assert server.popen.poll() is None
        status, headers, body = client.predict("b", {"instances": [1.0]})
        assert status == 200 and body["predictions"] == [20.5]
        status, headers, body = client.predict("keep", {"instances": [1.0]})
        assert status == 200 and headers["x-model-version"] == "2"
        assert client.predict("a", {"instances": [1.0]})[0] == 404
        # the removed model's metrics series go once it is unloaded (issue 27 item 8)
        deadline = time.monotonic() + 10
        while '"a"' in (page := client.call("GET", "/monitoring/prometheus/metrics")[2].decode()):
            assert time.monotonic() < deadline, [line for line in page.splitlines()
                                                 if '"a"' in line][:5]
            time.sleep(0.1)
        assert '"b"' in page
        # one inotify instance for every model's source (the kernel allows a user 128), and
        # one for the config file's watcher
        assert _inotify_instances(server.popen.pid) <= 2
    finally:
        failures = probe.finish()
        client.close()
        versions.close()
    assert failures == []
    assert probe.versions == ["1", "2"]  # the old path answered until the new one was ready
    assert server.terminate() == 0, server.stderr


def test_filesystem_trouble_is_a_condition_and_bad_versions_cost_little(tmp_path):
    """A symlink loop where the base path was (ELOOP; EACCES, EMFILE, EIO and ESTALE take the
    same path), a version named past int64 (TF Serving's safe_strto64 skips it), a FIFO for a
    saved_model.pb, a broken version, and a version copied in with its mtimes kept: the live
    version answers throughout and each is handled in a bounded number of log lines."""
    versions = tfs_models.HalfPlusTwo()
    base = tmp_path / "m"
    base.mkdir()
    tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
    server, port, grpc_port = start(f"--model_base_path={base}", "--model_name=m",
                                    "--work_dir", tmp_path / "work",
                                    "--max_num_load_retries=2",
                                    "--load_retry_interval_micros=300000")
    loaded(server, base, 1)
    probe = Probe(port, "m")
    try:
        # ELOOP: the base path replaced by a symlink to itself, then put back
        aside = tmp_path / "aside"
        base.rename(aside)
        base.symlink_to(base.name)
        error = server.wait_for(lambda e: e["event"] == "filesystem_error", timeout=10)
        assert "Too many levels of symbolic links" in error["error"]
        time.sleep(1.5)  # polls go on meanwhile: logged once, not at each
        assert len(server.named("filesystem_error")) == 1
        base.unlink()
        aside.rename(base)
        server.wait_for(lambda e: e["event"] == "filesystem_recovered", timeout=10)

        # a version past int64: ignored, so "latest" stays 1 for gRPC too
        shutil.copytree(base / "1", base / "99999999999999999999")
        shutil.copytree(base / "1", base / "9223372036854775808")
        _metadata(grpc_port, "m")

        # a FIFO for saved_model.pb: refused without opening it; the next version loads
        fifo = base / ".staging-3"
        fifo.mkdir()
        os.mkfifo(fifo / "saved_model.pb")
        fifo.rename(base / "3")
        failed = server.wait_for(lambda e: e["event"] == "load_failed" and e["step"] == 3,
                                 timeout=10)
        assert "a FIFO" in failed["error"]

        # a broken version: tried 1 + 2 times, 0.3 s apart, then refused until it changes
        broken = base / ".staging-4"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
        broken.rename(base / "4")
        final = server.wait_for(lambda e: e["event"] == "load_failed" and e["step"] == 4
                                and e["final"], timeout=30)
        assert final["attempt"] == 3
        time.sleep(1.0)
        assert len([e for e in server.named("load_failed") if e["step"] == 4]) == 3
        assert len([e for e in server.named("load_failed") if e["step"] == 3]) == 3

        # copied with its mtimes kept (cp -a), caught while variables/ is empty: loaded once
        # the copy completes (its dir's ctime, its identity, does not change then)
        source = tmp_path / "v5"
        versions.save(source, b=5.0)
        target = base / "5"
        target.mkdir()
        shutil.copy2(source / "saved_model.pb", target / "saved_model.pb")
        (target / "variables").mkdir()
        server.wait_for(lambda e: e["event"] == "version_incomplete" and e["step"] == 5,
                        timeout=30)
        for name in os.listdir(source / "variables"):
            shutil.copy2(source / "variables" / name, target / "variables" / name)
        loaded(server, base, 5, timeout=30)
        assert not [e for e in server.named("load_failed") if e["step"] == 5]
    finally:
        failures = probe.finish()
        versions.close()
    assert failures == []
    assert server.terminate() == 0, server.stderr  # a FIFO no longer blocks the stop


def _metadata(port: int, model: str) -> None:
    from tensorflow_serving.apis import (get_model_metadata_pb2,
                                         prediction_service_pb2_grpc)

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
            request, timeout=30)
    assert answer.model_spec.version.value == 1


def _predict_request(shape: list[int]):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, float_val=[1.0],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in shape])))
    return request


def test_a_warmup_that_breaks_a_limit_and_a_full_work_dir_refuse_one_version(tmp_path):
    """A warm-up record declaring shape [2**40] (a MemoryError before) refuses its version,
    and the gate's record of that refusal cannot be written (the work dir past its size limit,
    as on a full disk): logged once as record_failed, serving goes on, the next version loads.
    A model named like a path writes under the work dir, never where the name points."""
    versions = tfs_models.HalfPlusTwo()
    name = "../escape"
    base = tmp_path / "m"
    base.mkdir()
    tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
    work = tmp_path / "work"
    path = tmp_path / "models.config"
    flag = config_file(path, {name: base})
    server, port, _ = start(flag, "--work_dir", work)
    loaded(server, base, 1)
    probe = Probe(port, "..%2Fescape")
    probe.wait_for_version("1")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.prlimit(server.popen.pid, resource.RLIMIT_FSIZE, (64, hard))
    try:
        def build(p):
            versions.save(p, b=2.0)
            tfs_models.warmup_records(p, [_predict_request([2**40])])
        tfs_models.publish(base, 2, build)
        refused = server.wait_for(lambda e: e["event"] == "promotion_refused", timeout=30)
        assert refused["step"] == 2
        failed = server.wait_seen(lambda e: e["event"] == "record_failed", timeout=10)
        assert "File too large" in failed["error"]
        tfs_models.publish(base, 3, lambda p: versions.save(p, b=3.0))
        loaded(server, base, 3)
        resource.prlimit(server.popen.pid, resource.RLIMIT_FSIZE, (soft, hard))
        server.wait_for(lambda e: e["event"] == "record_recovered", timeout=10)
        probe.wait_for_version("3")  # the whole run can take under 100 ms
    finally:
        failures = probe.finish()
        versions.close()
    assert failures == []
    assert probe.versions == ["1", "3"], probe.versions
    assert len(server.named("record_failed")) == 1
    assert (work / "%2E%2E%2Fescape" / "gate.json").is_file()
    assert not (tmp_path / "escape").exists()
    assert server.terminate() == 0, server.stderr


def test_a_reload_is_refused_without_a_config_file(tmp_path):
    """HandleReloadConfigRequest points the server at any directory: an operator's act, taken
    only by a server that runs from --model_config_file (README: where we differ)."""
    versions = tfs_models.HalfPlusTwo()
    base = tmp_path / "m"
    base.mkdir()
    tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
    versions.close()
    server, port, grpc_port = start(f"--model_base_path={base}", "--model_name=m",
                                    "--work_dir", tmp_path / "work")
    loaded(server, base, 1)
    error = _reload(grpc_port, {"m": tmp_path})
    assert error is not None and error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "--model_config_file" in error.details()
    assert server.terminate() == 0, server.stderr


def test_when_the_kernel_refuses_inotify_a_model_polls_and_says_so(tmp_path):
    """The survival issue's row: one inotify instance per model, against the kernel's 128 per
    user, and a refusal outside any ``try``. Now one instance serves every model, and when the
    kernel refuses it (here every instance the user may have is held by the test), each source
    logs ``watch_fallback_polling`` once and polls: its versions still load, within a second."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    held: list[int] = []
    base = tmp_path / "m"
    base.mkdir()
    versions = tfs_models.HalfPlusTwo()
    tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
    try:
        while len(held) < 4096 and (fd := libc.inotify_init1(os.O_CLOEXEC)) >= 0:
            held.append(fd)
        assert 0 < len(held) < 4096, len(held)  # the per-user limit was reached
        server, port, _ = start(f"--model_base_path={base}", "--model_name=m", "--work_dir",
                                tmp_path / "work")
        fallback = server.wait_seen(lambda e: e["event"] == "watch_fallback_polling", timeout=30)
        assert fallback["poll_seconds"] == 1.0 and "inotify" in fallback["reason"]
        loaded(server, base, 1)
        probe = Probe(port, "m")
        tfs_models.publish(base, 2, lambda p: versions.save(p, b=2.0))
        loaded(server, base, 2, timeout=10)
        probe.wait_for_version("2")
        assert probe.finish() == [] and probe.versions == ["1", "2"], probe.versions
    finally:
        for fd in held:
            os.close(fd)
        versions.close()
    assert len(server.named("watch_fallback_polling")) == 1
    assert server.terminate() == 0, server.stderr
