"""The gRPC front around the calls, as TF Serving's ``server.cc`` builds it, through a real
server process and real clients: a request's tensors bounded before anything is allocated (and
what the rest cost), bytes that are not a request, TLS and mutual TLS from ``--ssl_config_file``,
``grpc.health.v1``, server reflection, and a Unix socket."""

from __future__ import annotations

import datetime
import json
import socket
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from harness.processes import free_ports
from tests import tfs_models
from tests.helpers import run_warm, warm
from tests.test_model_server import loaded

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

MiB = 1 << 20


def _shape(*dims: int):
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in dims])


def _request(tensor: tensor_pb2.TensorProto, model: str = "hp2"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tensor)
    return request


def _floats(*dims: int, values=(), content: bytes = b"", dtype=types_pb2.DT_FLOAT):
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=_shape(*dims),
                                  float_val=list(values), tensor_content=content)


def _stub(target: str, credentials=None, **options):
    settings = [("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1), *options.items()]
    channel = grpc.secure_channel(target, credentials, settings) if credentials is not None \
        else grpc.insecure_channel(target, settings)
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _code(call, request, timeout: float = 10) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failure:
        call(request, timeout=timeout)
    return failure.value.code(), failure.value.details()


def _serve(root, *args, version: bool = True):
    """half_plus_two (y = 0.5x + 1) at version 1 of ``root``/hp2, served with ``args``."""
    base = root / "hp2"
    base.mkdir(parents=True)
    versions = tfs_models.HalfPlusTwo()
    if version:
        tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
    rest, port = free_ports(2)
    server = warm("consumer.model_server", f"--model_base_path={base}", "--model_name=hp2",
                  f"--rest_api_port={rest}", f"--port={port}", "--work_dir", root / "w", *args)
    if version:
        loaded(server, base, 1)
    else:
        server.wait_for(lambda e: e["event"] == "serving")
    return server, port, base, versions


def _peak_rss_reset(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM back to the RSS of now (proc(5))


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def _clean(server) -> None:
    assert server.terminate() == 0, server.stderr[-2000:]
    assert "Traceback" not in server.stderr and "Exception deserializing" not in server.stderr
    assert not server.named("request_failed") and not any(
        "Exception" in e["event"] for e in server.events), server.events[-5:]


# -- a request's tensors -----------------------------------------------------------------------

def test_a_tensor_is_checked_before_anything_is_allocated(tmp_path):
    """TF's ``Tensor::FromProto`` (tensorflow/core/framework/tensor.cc) refuses an invalid shape
    (``TensorShape::IsValid``, tensor_shape.cc: no negative dimension, a product in int64) or
    dtype, and a ``tensor_content`` of the wrong size; TF Serving then answers INVALID_ARGUMENT
    "tensor parsing error: <alias>" (tensorflow/cc/saved_model/util.cc, ``GetInputValues``).
    A typed field with fewer values than the shape is filled with its last (``FromProtoField``):
    kept, within a bound. Before: one float_val and shape [5e7] took 2.5-3.1 GB and 7-11 s,
    [2e9] grew past 23 GB until the kernel killed the server, DT_RESOURCE was INTERNAL."""
    server, port, _, versions = _serve(tmp_path, "--max_request_elements=3000000")
    channel, stub = _stub(f"127.0.0.1:{port}")
    _peak_rss_reset(server.popen.pid)
    before = _peak_rss(server.popen.pid)
    refused = {
        "shape [5e7], one value": (_floats(50_000_000, 1, values=[1.0]), "declare 50000000 "
                                   "elements, over the limit of 3000000 (--max_request_elements)"),
        "shape [2e9], one value": (_floats(2_000_000_000, 1, values=[1.0]), "over the limit"),
        "int64 overflow": (_floats(2**62, 4, values=[1.0]), "more elements than int64"),
        "negative": (_floats(-1, 1, values=[1.0]), "negative dimension"),
        "DT_RESOURCE": (_floats(1, dtype=types_pb2.DT_RESOURCE),
                        "tensor parsing error: x: dtype DT_RESOURCE is not supported"),
        "DT_VARIANT": (_floats(1, dtype=types_pb2.DT_VARIANT), "DT_VARIANT is not supported"),
        "no dtype": (_floats(1, dtype=types_pb2.DT_INVALID), "DT_INVALID is not supported"),
        "short content": (_floats(3, 1, content=b"\0" * 8), "tensor_content holds 8 bytes where"
                                                            " its shape and dtype need 12"),
        # within --max_request_elements, but 2e6 elements from one value: a fill is bounded
        "a fill of 2e6": (_floats(2_000_000, 1, values=[1.0]), "repeated for at most 1048576"),
    }
    for case, (tensor, text) in refused.items():
        started = time.monotonic()
        code, details = _code(stub.Predict, _request(tensor))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and text in details, (case, details)
        assert time.monotonic() - started < 1.0, case
    assert _peak_rss(server.popen.pid) - before < 32 * MiB  # nothing was built for them
    # TF's fill, as TF Serving answers it, and a full 2e6 (8 MB) within the bound
    answer = stub.Predict(_request(_floats(4, 1, values=[2.0])), timeout=10)
    assert list(answer.outputs["y"].float_val) == [2.0] * 4
    rows = np.arange(2_000_000, dtype=np.float32)
    answer = stub.Predict(_request(_floats(2_000_000, 1, content=rows.tobytes())), timeout=30)
    assert np.array_equal(np.asarray(answer.outputs["y"].float_val, np.float32), rows * 0.5 + 1)
    channel.close()
    versions.close()
    _clean(server)


def test_a_large_tensor_costs_a_small_multiple_of_its_size(tmp_path):
    """A 64 MB tensor_content through half_plus_two (whose own run holds its input, a*x and y):
    the server's peak RSS grows by under 8x the request (measured 5.2-6.1x: gRPC's bytes, the
    parsed message, the model's input, a*x and y, the answer's proto and its bytes). Before, a
    200 MB one peaked at 15x (make_ndarray's copy, lists of Python floats for the answer)."""
    count = 16 * MiB  # float32: 64 MiB
    server, port, _, versions = _serve(tmp_path, f"--max_request_elements={count}")
    channel, stub = _stub(f"127.0.0.1:{port}")
    request = _request(_floats(count, 1, content=np.full(count, 2.0, np.float32).tobytes()))
    size = request.ByteSize()
    _peak_rss_reset(server.popen.pid)
    before = _peak_rss(server.popen.pid)
    answer = stub.Predict(request, timeout=60)
    grown = _peak_rss(server.popen.pid) - before
    assert len(answer.outputs["y"].float_val) == count and answer.outputs["y"].float_val[-1] == 2.0
    print(f"peak RSS +{grown / MiB:.0f} MiB for a {size / MiB:.0f} MiB request "
          f"({grown / size:.1f}x)")
    assert grown < 8 * size, grown / size
    channel.close()
    versions.close()
    _clean(server)


def test_a_warmup_record_declaring_2_to_the_40_refuses_its_version_only(tmp_path):
    """TF Serving's warm-up fails that version's load and the server goes on
    (servables/tensorflow/saved_model_warmup_util.cc); here the record's tensor is refused
    before it is built (not a MemoryError), the version is refused and the live one answers."""
    server, port, base, versions = _serve(tmp_path)

    def build(path):
        versions.save(path, b=2.0)
        tfs_models.warmup_records(path, [_request(_floats(2**40, values=[1.0]))])
    tfs_models.publish(base, 2, build)
    refused = server.wait_for(lambda e: e["event"] in ("promotion_refused", "model_loaded"))
    assert refused["event"] == "promotion_refused" and refused["step"] == 2, refused
    assert "INVALID_ARGUMENT" in refused["reason"] and "tensor parsing error" in refused["reason"]
    channel, stub = _stub(f"127.0.0.1:{port}")
    answer = stub.Predict(_request(_floats(1, values=[2.0])), timeout=10)
    assert answer.model_spec.version.value == 1 and answer.outputs["y"].float_val == [2.0]
    channel.close()
    versions.close()
    _clean(server)


def test_bytes_that_are_not_a_request_get_one_line_and_no_traceback(tmp_path):
    """grpcio logs "Exception deserializing message!" with a traceback and answers INTERNAL
    (TF Serving's C++ gRPC: INTERNAL too, grpcpp/impl/generic_serialize.h). Our services answer
    INVALID_ARGUMENT with one line; health's, whose reader is grpcio's, INTERNAL; neither logs."""
    server, port, _, versions = _serve(tmp_path, "--enable_grpc_healthcheck_service")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    garbage = b"\xff\xff\xff\xff not a protobuf"
    for method, code in (("/tensorflow.serving.PredictionService/Predict", "INVALID_ARGUMENT"),
                         ("/tensorflow.serving.ModelService/GetModelStatus", "INVALID_ARGUMENT"),
                         ("/grpc.health.v1.Health/Check", "INTERNAL")):
        raw = channel.unary_unary(method, request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
        got, details = _code(raw, garbage)
        assert got == getattr(grpc.StatusCode, code) and "\n" not in details, (method, details)
    assert "is not a tensorflow.serving.PredictRequest" in _code(
        channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                            request_serializer=lambda b: b), garbage)[1]
    channel.close()
    versions.close()
    _clean(server)


# -- TLS -------------------------------------------------------------------------------------

class Certificates:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, each
    PEM, made here with the ``cryptography`` package (EC keys: milliseconds)."""

    def __init__(self, days: float = 1) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.ec = ec
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = self._certificate("test CA", self.ca_key, None, days, ca=True)
        self.server_key = ec.generate_private_key(ec.SECP256R1())
        self.server = self._certificate("server", self.server_key, self.ca_key, days)
        self.client_key = ec.generate_private_key(ec.SECP256R1())
        self.client = self._certificate("client", self.client_key, self.ca_key, days)

    def _certificate(self, name: str, key, signer, days: float, ca: bool = False):
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer = subject if signer is None else self.ca.subject
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=2))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return builder.sign(signer or key, hashes.SHA256())

    @staticmethod
    def pem(item) -> bytes:
        from cryptography.hazmat.primitives import serialization

        if hasattr(item, "private_bytes"):
            return item.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        return item.public_bytes(serialization.Encoding.PEM)

    def ssl_config(self, path, client_verify: bool = False, custom_ca: bool | str = True,
                   **fields):
        """TF Serving's SSLConfig text proto (tensorflow_serving/config/ssl_config.proto): the
        PEM texts themselves, not paths. ``custom_ca``: ours, none, or this text."""
        if custom_ca is True:
            custom_ca = self.pem(self.ca).decode()
        values = {"server_key": self.pem(self.server_key).decode(),
                  "server_cert": self.pem(self.server).decode(),
                  **({"custom_ca": custom_ca} if custom_ca else {}), **fields}
        path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items())
                        + f"client_verify: {str(client_verify).lower()}\n")
        return f"--ssl_config_file={path}"


def test_tls_and_mutual_tls_from_the_ssl_config_file(tmp_path):
    """server.cc (``BuildServerCredentials``): the key-cert pair from SSLConfig, custom_ca as the
    client roots, client_verify as "require and verify a client certificate". A client that
    trusts the CA is answered over grpc.secure_channel; a plaintext one is not; with
    client_verify, a client without a certificate, or with one from another CA, is refused."""
    certs = Certificates()
    server, port, _, versions = _serve(tmp_path, certs.ssl_config(tmp_path / "ssl.config"))
    trusted = grpc.ssl_channel_credentials(root_certificates=certs.pem(certs.ca))
    channel, stub = _stub(f"127.0.0.1:{port}", trusted)
    assert stub.Predict(_request(_floats(1, values=[2.0])), timeout=10).outputs["y"].float_val \
        == [2.0]
    channel.close()
    channel, stub = _stub(f"127.0.0.1:{port}")
    assert _code(stub.Predict, _request(_floats(1, values=[2.0])), 3)[0] == \
        grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
    channel.close()
    assert server.named("grpc_serving")[0]["tls"] == "server"
    _clean(server)

    versions.close()
    mutual, port, _, versions = _serve(tmp_path / "mutual",
                                       certs.ssl_config(tmp_path / "mtls.config", True))
    with_cert = grpc.ssl_channel_credentials(certs.pem(certs.ca), certs.pem(certs.client_key),
                                             certs.pem(certs.client))
    channel, stub = _stub(f"127.0.0.1:{port}", with_cert)
    assert stub.Predict(_request(_floats(1, values=[2.0])), timeout=10).outputs["y"].float_val \
        == [2.0]
    channel.close()
    other = Certificates()
    for credentials in (trusted, grpc.ssl_channel_credentials(
            certs.pem(certs.ca), certs.pem(other.client_key), certs.pem(other.client))):
        channel, stub = _stub(f"127.0.0.1:{port}", credentials)
        assert _code(stub.Predict, _request(_floats(1, values=[2.0])), 3)[0] == \
            grpc.StatusCode.UNAVAILABLE  # the handshake fails: no call is made
        channel.close()
    assert mutual.named("grpc_serving")[0]["tls"] == "mutual"
    versions.close()
    _clean(mutual)


def _bad_configs(tmp_path) -> dict:
    certs, other = Certificates(), Certificates()
    expired = Certificates(days=-1)
    path = tmp_path / "ssl.config"
    return {
        "missing": (lambda: f"--ssl_config_file={tmp_path / 'nope'}", "No such file"),
        "not a text proto": (lambda: (path.write_text("server_key: [\n"),
                                      f"--ssl_config_file={path}")[1], "not an SSLConfig"),
        "empty key": (lambda: certs.ssl_config(path, server_key=""), "server_key is empty"),
        "a path for PEM": (lambda: certs.ssl_config(path, server_cert="/etc/server.crt"),
                           "server_cert is not PEM (it holds the PEM text itself, not a file's "
                           "path)"),
        "another's key": (lambda: certs.ssl_config(
            path, server_key=certs.pem(other.server_key).decode()),
                          "server_cert is not the certificate of server_key"),
        "expired": (lambda: expired.ssl_config(path), "server_cert expired on"),
        "bad CA": (lambda: certs.ssl_config(path, custom_ca="-----BEGIN CERTIFICATE-----\nxx\n"),
                   "custom_ca holds no certificate that parses"),
        "verify, no CA": (lambda: certs.ssl_config(path, client_verify=True, custom_ca=False),
                          "client_verify is true and there is no custom_ca"),
    }


def test_a_bad_ssl_config_stops_the_start_with_one_line(tmp_path):
    """TF Serving crashes on an unparsable SSLConfig (server.cc: ``CHECK_OK``) or fails to build
    its server on a bad key; here each is one line and exit 2, before any port is bound."""
    base = tmp_path / "hp2"
    base.mkdir()
    for case, (make, text) in _bad_configs(tmp_path).items():
        result = run_warm("consumer.model_server", f"--model_base_path={base}",
                          "--model_name=hp2", "--rest_api_port=0", f"--port={free_ports(1)[0]}",
                          "--work_dir", tmp_path / "w", make(), timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and text in lines[0], (case, lines)
        assert lines[0].startswith("model_server: error: --ssl_config_file"), lines


# -- health, reflection, the Unix socket -------------------------------------------------------

def _health(channel, service: str = "") -> str:
    answer = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def _listed(channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5)
    return {service.name for answer in answers
            for service in answer.list_services_response.service}


def test_health_is_serving_only_while_every_model_has_a_version(tmp_path):
    """TF Serving sets "ModelService" and "PredictionService" SERVING once its server is built,
    which is after its models have loaded (server.cc, ``EnableDefaultHealthCheckService``); we
    open the port at once, so NOT_SERVING until the version is available, then SERVING, for ""
    and each service's short and full name; an unknown name is NOT_FOUND. Reflection lists the
    services, health among them."""
    server, port, base, versions = _serve(tmp_path, "--enable_grpc_healthcheck_service",
                                          version=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    assert _health(channel) == "NOT_SERVING"
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="tensorflow.serving.PredictionService"), timeout=30)
    assert health_pb2.HealthCheckResponse.ServingStatus.Name(next(watch).status) == "NOT_SERVING"
    tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
    assert health_pb2.HealthCheckResponse.ServingStatus.Name(next(watch).status) == "SERVING"
    watch.cancel()
    for name in ("", "PredictionService", "ModelService", "tensorflow.serving.ModelService"):
        assert _health(channel, name) == "SERVING", name
    with pytest.raises(grpc.RpcError) as unknown:
        _health(channel, "nope")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert _listed(channel) >= {"tensorflow.serving.PredictionService",
                                "tensorflow.serving.ModelService", "grpc.health.v1.Health",
                                "grpc.reflection.v1alpha.ServerReflection"}
    assert [e["status"] for e in server.named("grpc_health")] == ["NOT_SERVING", "SERVING"]
    channel.close()
    versions.close()
    _clean(server)


def test_grpc_on_a_unix_socket_beside_the_port(tmp_path):
    """server.cc: with --grpc_socket_path, the same services on "unix:<path>" too. A stale
    socket left by a killed server is replaced; a path that cannot be a socket stops the start
    with one line. Without the health flag, Health is UNIMPLEMENTED; reflection is on."""
    path = tmp_path / "grpc.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, as a killed server leaves it
    server, port, _, versions = _serve(tmp_path, f"--grpc_socket_path={path}")
    channel, stub = _stub(f"unix:{path}")
    answer = stub.Predict(_request(_floats(1, values=[4.0])), timeout=10)
    assert answer.outputs["y"].float_val == [3.0] and answer.model_spec.version.value == 1
    with pytest.raises(grpc.RpcError) as no_health:
        _health(channel)
    assert no_health.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"} <= \
        _listed(channel) and "grpc.health.v1.Health" not in _listed(channel)
    channel.close()
    versions.close()
    _clean(server)
    assert not path.exists()  # ours, removed at the stop

    (tmp_path / "file").write_text("")
    for where, text in ((tmp_path / "no_dir" / "s", "is not a directory"),
                        (tmp_path / "file", "exists and is not a socket")):
        result = run_warm("consumer.model_server", f"--model_base_path={tmp_path / 'hp2'}",
                          "--model_name=hp2", "--rest_api_port=0",
                          f"--port={free_ports(1)[0]}", "--work_dir", tmp_path / "w",
                          f"--grpc_socket_path={where}", timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and text in lines[0], lines


def test_calls_waiting_for_a_grpc_thread_are_bounded(tmp_path):
    """gRPC calls that wait for one of ``--grpc_max_threads`` were queued without end (a review
    found 16 five-second calls on 4 threads answered in waves until 21 s). Now the calls
    running or waiting are at most 16 a thread (at least 64): past that, RESOURCE_EXHAUSTED at
    once, grpcio's own answer, and the others are answered. A call whose client's deadline
    passed while it waited is not run."""
    base = tmp_path / "slow"
    base.mkdir()
    versions = tfs_models.HalfPlusTwo(spin=5000)  # about 30 ms a call
    tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
    versions.close()
    rest, port = free_ports(2)
    server = warm("consumer.model_server", f"--model_base_path={base}", "--model_name=slow",
                  f"--rest_api_port={rest}", f"--port={port}", "--work_dir", tmp_path / "w",
                  "--grpc_max_threads=1")
    loaded(server, base, 1)
    channel, stub = _stub(f"127.0.0.1:{port}")
    calls = [stub.Predict.future(_request(_floats(1, values=[4.0]), "slow"), timeout=60)
             for _ in range(100)]
    codes = []
    for call in calls:
        try:
            codes.append(grpc.StatusCode.OK if call.result().outputs["y"].float_val == [3.0]
                         else None)
        except grpc.RpcError as err:
            codes.append(err.code())
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, set(codes)
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert 36 >= refused >= 1, refused  # 64 running or waiting at most, on one thread
    late = stub.Predict.future(_request(_floats(1, values=[4.0]), "slow"), timeout=60)
    assert late.result().outputs["y"].float_val == [3.0]  # the bound is free again
    channel.close()
    _clean(server)
