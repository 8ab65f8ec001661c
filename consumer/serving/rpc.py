"""The gRPC front: TF Serving's ``PredictionService`` and ``ModelService``, with the service
definitions and messages of the ``tensorflow-serving-api`` package, over
``consumer.serving.calls``. Each method turns its request into arrays, makes the call, and turns
the answer into TF Serving's response; a ``ServingError`` becomes the gRPC status of the same
name, its message cut at 1024 bytes as TF Serving cuts it.
"""

from __future__ import annotations

import time
from concurrent import futures
from typing import Callable

import grpc
from google.protobuf import any_pb2

from consumer.serving import inference, protos
from consumer.serving.admission import Admission
from consumer.serving.calls import Calls, Target
from consumer.serving.errors import ServingError, invalid
from consumer.serving.metrics import ServingMetrics
from shared import logs

from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,  # noqa: E402
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2, status_pb2)
from tensorflow.core.protobuf import error_codes_pb2  # noqa: E402

log = logs.get("consumer")

MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving's default, both ways; --grpc_channel_arguments lowers it
_STATES = get_model_status_pb2.ModelVersionStatus.State
_CODES = {name: getattr(grpc.StatusCode, name) for name in grpc.StatusCode.__members__}


def target(model_spec) -> Target:
    """What a request's ``ModelSpec`` names (TF Serving's ``version`` is a wrapper: absent is
    the latest)."""
    choice = model_spec.WhichOneof("version_choice")
    return Target(model_spec.name,
                  model_spec.version.value if choice == "version" else None,
                  model_spec.version_label if choice == "version_label" else None)


def _spec(name: str, version: int, signature_name: str | None):
    spec = model_pb2.ModelSpec(name=name)
    spec.version.value = version
    if signature_name is not None:
        spec.signature_name = signature_name
    return spec


class _Service:
    """The part both services share: run a call, time it, count it, and map its error."""

    def __init__(self, calls: Calls, metrics: ServingMetrics, reload: Callable | None = None,
                 admission: Admission | None = None) -> None:
        self.calls, self.metrics, self.reload = calls, metrics, reload
        self.admission = admission or Admission(None)

    def _serve(self, endpoint: str, model: str, context, call: Callable):
        started, code, version, admitted = time.perf_counter(), "OK", None, False
        try:
            self.admission.enter()  # past the bound: UNAVAILABLE now, not a long queue
            admitted = True
            response, version = call()
            return response
        except ServingError as err:  # the client's mistake, or a model's: one line, no trace
            code = err.code
            context.abort(_CODES[err.code], _truncated(err.message))
        except Exception as err:  # a defect of ours: this call fails, the server goes on
            code = "INTERNAL"
            log.exception("request_failed", endpoint=endpoint, protocol="grpc",
                          error=f"{type(err).__name__}: {err}")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}")
        finally:
            if admitted:
                self.admission.leave()
            self.metrics.observe("grpc", endpoint, model, code, time.perf_counter() - started,
                                 version)


def _truncated(message: str) -> str:
    return message if len(message) <= 1024 else message[:1024] + "...TRUNCATED"


class PredictionService(_Service, prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request, context):  # noqa: N802 - gRPC's method names
        def call():
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            inputs = {key: protos.to_array(proto) for key, proto in request.inputs.items()}
            answer = self.calls.predict(target(request.model_spec),
                                        request.model_spec.signature_name, inputs,
                                        tuple(request.output_filter))
            response = predict_pb2.PredictResponse(
                model_spec=_spec(request.model_spec.name, answer.version, answer.signature_name))
            for key, array in answer.result.items():
                response.outputs[key].CopyFrom(protos.to_proto(array))
            return response, answer.version
        return self._serve("predict", request.model_spec.name, context, call)

    def Classify(self, request, context):  # noqa: N802
        def call():
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            answer = self.calls.classify(target(request.model_spec),
                                         request.model_spec.signature_name,
                                         protos.serialized_examples(request.input))
            return classification_pb2.ClassificationResponse(
                model_spec=_spec(request.model_spec.name, answer.version, answer.signature_name),
                result=_classification(answer.result)), answer.version
        return self._serve("classify", request.model_spec.name, context, call)

    def Regress(self, request, context):  # noqa: N802
        def call():
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            answer = self.calls.regress(target(request.model_spec),
                                        request.model_spec.signature_name,
                                        protos.serialized_examples(request.input))
            return regression_pb2.RegressionResponse(
                model_spec=_spec(request.model_spec.name, answer.version, answer.signature_name),
                result=_regression(answer.result)), answer.version
        return self._serve("regress", request.model_spec.name, context, call)

    def MultiInference(self, request, context):  # noqa: N802
        name = request.tasks[0].model_spec.name if request.tasks else ""

        def call():
            # The first task's servable is looked up before any task is checked (an empty name
            # there is "ModelSpec has no name specified."), as TF Serving's multi_inference_helper
            tasks = [inference.Task(t.model_spec.name, t.model_spec.signature_name,
                                    t.method_name) for t in request.tasks]
            first = target(request.tasks[0].model_spec) if request.tasks else Target("")
            answer = self.calls.multi_inference(first, tasks,
                                                protos.serialized_examples(request.input))
            response = inference_pb2.MultiInferenceResponse()
            for task, result in zip(request.tasks, answer.result):
                entry = response.results.add(model_spec=_spec(
                    name, answer.version, inference.signature_key(task.model_spec.signature_name)))
                if isinstance(result, inference.Classification):
                    entry.classification_result.CopyFrom(_classification(result))
                else:
                    entry.regression_result.CopyFrom(_regression(result))
            return response, answer.version
        return self._serve("multi_inference", name, context, call)

    def GetModelMetadata(self, request, context):  # noqa: N802
        def call():
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise invalid(f"Metadata field {field} is not supported")
            answer = self.calls.metadata(target(request.model_spec))
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for key, signature in answer.result.items():
                signatures.signature_def[key].CopyFrom(signature.proto)
            packed = any_pb2.Any()
            packed.Pack(signatures)
            response = get_model_metadata_pb2.GetModelMetadataResponse(
                model_spec=_spec(request.model_spec.name, answer.version, None))
            response.metadata["signature_def"].CopyFrom(packed)
            return response, answer.version
        return self._serve("metadata", request.model_spec.name, context, call)


def _classification(result: inference.Classification):
    out = classification_pb2.ClassificationResult()
    for labels, scores in zip(result.labels, result.scores):
        row = out.classifications.add()
        for label, score in zip(labels, scores):
            row.classes.add(label=label.decode("utf-8", "replace")
                            if isinstance(label, bytes) else str(label), score=score)
    return out


def _regression(values):
    out = regression_pb2.RegressionResult()
    for value in values:
        out.regressions.add(value=float(value))
    return out


class ModelService(_Service, model_service_pb2_grpc.ModelServiceServicer):
    def GetModelStatus(self, request, context):  # noqa: N802
        def call():
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.WhichOneof("version_choice") == "version" \
                else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for step, state in self.calls.status(spec.name, version):
                response.model_version_status.add(
                    version=step, state=_STATES.Value(state.state),
                    status=status_pb2.StatusProto(error_code=_error_code(state.error_code),
                                                  error_message=state.error_message))
            return response, None
        return self._serve("status", request.model_spec.name, context, call)

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        def call():
            if self.reload is None:
                raise ServingError("UNIMPLEMENTED", "this server was not started with "
                                                    "--model_config_file: there is no config "
                                                    "to reload")
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid("ServerModelConfig type not supported by HandleReloadConfigRequest."
                              " Only ModelConfigList is currently supported")
            self.reload(request.config)
            return model_management_pb2.ReloadConfigResponse(
                status=status_pb2.StatusProto(error_code=0)), None
        return self._serve("reload_config", "", context, call)


def _error_code(name: str) -> int:
    return error_codes_pb2.Code.Value(name)


def channel_options(arguments: str) -> list[tuple[str, object]]:
    """``--grpc_channel_arguments`` (``key=value,...``) as gRPC options, over TF Serving's
    message size limits; integers as integers."""
    options: dict[str, object] = {"grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
                                  "grpc.max_send_message_length": MAX_MESSAGE_BYTES}
    for item in filter(None, (part.strip() for part in arguments.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: {item!r} is not key=value")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return list(options.items())


class GrpcServer:
    """A gRPC server for both services, bound in the constructor (a port in use fails here)."""

    def __init__(self, calls: Calls, metrics: ServingMetrics, server_options,
                 options: list | None = None, reload: Callable | None = None,
                 admission: Admission | None = None) -> None:
        """``server_options``: the server's ``Options`` (host, grpc_port, grpc_threads, ...);
        ``options``: gRPC's channel options."""
        host, port = server_options.host, server_options.grpc_port
        self.server = grpc.server(futures.ThreadPoolExecutor(server_options.grpc_threads,
                                                             thread_name_prefix="grpc"),
                                  options=options or channel_options(""))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(calls, metrics, admission=admission), self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(calls, metrics, reload), self.server)  # status and reloads: never bounded
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self.host = host

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float) -> None:
        """Refuse new calls; those in flight get ``grace`` seconds to finish."""
        self.server.stop(grace).wait()
