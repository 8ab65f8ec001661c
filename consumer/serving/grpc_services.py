"""TF Serving's ``PredictionService`` and ``ModelService`` over ``consumer.serving.calls``, with
the service definitions and messages of the ``tensorflow-serving-api`` package. Each method
turns its request into arrays, makes the call, and turns the answer into TF Serving's response;
a ``ServingError`` becomes the gRPC status of the same name, its message cut at 1024 bytes as
TF Serving cuts it. A request whose bytes do not parse is the client's mistake: INVALID_ARGUMENT
with one line, counted like any other, and nothing in the log (``handlers``).
"""

from __future__ import annotations

import time
from typing import Callable

import grpc
from google.protobuf import any_pb2, message_factory

from consumer.serving import inference, protos
from consumer.serving.admission import Admission
from consumer.serving.calls import Calls, Target
from consumer.serving.errors import ServingError, invalid
from consumer.serving.json_parse import MAX_ELEMENTS
from consumer.serving.metrics import ServingMetrics
from shared import logs

from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,  # noqa: E402
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_pb2, model_service_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2,
                                     prediction_service_pb2_grpc, regression_pb2, status_pb2)
from tensorflow.core.protobuf import error_codes_pb2  # noqa: E402

log = logs.get("consumer")

_STATES = get_model_status_pb2.ModelVersionStatus.State
_CODES = {name: getattr(grpc.StatusCode, name) for name in grpc.StatusCode.__members__}
PREDICTION = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
MODEL = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]
_ENDPOINTS = {"Predict": "predict", "Classify": "classify", "Regress": "regress",
              "MultiInference": "multi_inference", "GetModelMetadata": "metadata",
              "GetModelStatus": "status", "HandleReloadConfigRequest": "reload_config"}


def target(model_spec) -> Target:
    """What a request's ``ModelSpec`` names (TF Serving's ``version`` is a wrapper: absent is
    the latest)."""
    choice = model_spec.WhichOneof("version_choice")
    return Target(model_spec.name,
                  model_spec.version.value if choice == "version" else None,
                  model_spec.version_label if choice == "version_label" else None)


def _spec(name: str, version: int, signature_name: str | None, spec=None):
    """The ``ModelSpec`` an answer names, written into ``spec`` if given (a response's own:
    building one apart and copying it in costs a predict ~10 us more)."""
    spec = model_pb2.ModelSpec() if spec is None else spec
    spec.name = name
    spec.version.value = version
    if signature_name is not None:
        spec.signature_name = signature_name
    return spec


class _Service:
    """The part both services share: run a call, time it, count it, and map its error."""

    def __init__(self, calls: Calls, metrics: ServingMetrics, reload: Callable | None = None,
                 admission: Admission | None = None, max_elements: int = MAX_ELEMENTS) -> None:
        self.calls, self.metrics, self.reload = calls, metrics, reload
        self.admission = admission or Admission(None)
        self.max_elements = max_elements  # a request's tensors, all together

    def guarded(self, name: str) -> Callable:
        """The method ``name``, for a request that may not have parsed (``_Unreadable``)."""
        behavior = getattr(self, name)

        def handle(request, context):
            if isinstance(request, _Unreadable):
                return self._serve(_ENDPOINTS.get(name, name), "", context, request.refuse)
            return behavior(request, context)
        return handle

    def _serve(self, endpoint: str, model: str, context, call: Callable):
        started, code, version, admitted = time.perf_counter(), "OK", None, False
        try:
            left = context.time_remaining()
            if left is not None and left <= 0:  # its client gave up while it queued: not run
                raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded")
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
            inputs = protos.to_arrays(request.inputs, self.max_elements)  # checked, then built
            answer = self.calls.predict(target(request.model_spec),
                                        request.model_spec.signature_name, inputs,
                                        tuple(request.output_filter))
            del inputs  # the request's arrays are spent: not held while the answer is built
            response = predict_pb2.PredictResponse()
            _spec(request.model_spec.name, answer.version, answer.signature_name,
                  response.model_spec)
            for key, array in answer.result.items():
                protos.to_proto(array, response.outputs[key])  # in place: no copy of a copy
            return response, answer.version
        return self._serve("predict", request.model_spec.name, context, call)

    def Classify(self, request, context):  # noqa: N802
        return self._on_examples("classify", request, context, self.calls.classify,
                                 lambda spec, result: classification_pb2.ClassificationResponse(
                                     model_spec=spec, result=_classification(result)))

    def Regress(self, request, context):  # noqa: N802
        return self._on_examples("regress", request, context, self.calls.regress,
                                 lambda spec, result: regression_pb2.RegressionResponse(
                                     model_spec=spec, result=_regression(result)))

    def _on_examples(self, endpoint: str, request, context, run: Callable, respond: Callable):
        """Classify and Regress: the request's tf.Examples through ``run``, the answer built by
        ``respond(model_spec, result)``."""
        def call():
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            answer = run(target(request.model_spec), request.model_spec.signature_name,
                         protos.serialized_examples(request.input))
            spec = _spec(request.model_spec.name, answer.version, answer.signature_name)
            return respond(spec, answer.result), answer.version
        return self._serve(endpoint, request.model_spec.name, context, call)

    def MultiInference(self, request, context):  # noqa: N802
        name = request.tasks[0].model_spec.name if request.tasks else ""

        def call():
            # The first task's servable is looked up before any task is checked (an empty name
            # there is "ModelSpec has no name specified."), as TF Serving's multi_inference_helper
            tasks = [inference.Task(t.model_spec.name, t.model_spec.signature_name,
                                    t.method_name) for t in request.tasks]
            first = target(request.tasks[0].model_spec) if request.tasks else Target("")
            examples = protos.serialized_examples(request.input)
            answer = self.calls.multi_inference(first, tasks, examples)
            self.metrics.examples(name, len(examples))  # TF Serving: MultiInference only
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
            # TF Serving's own check first (model_service_impl.cc), then ours: a reload is an
            # operator's act, taken only by a server that runs from a config file
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid("ServerModelConfig type not supported by HandleReloadConfigRequest."
                              " Only ModelConfigList is currently supported")
            if self.reload is None:
                raise ServingError("UNIMPLEMENTED", "this server was not started with "
                                                    "--model_config_file: there is no config "
                                                    "to reload")
            self.reload(request.config)
            return model_management_pb2.ReloadConfigResponse(
                status=status_pb2.StatusProto(error_code=0)), None
        return self._serve("reload_config", "", context, call)


def _error_code(name: str) -> int:
    return error_codes_pb2.Code.Value(name)


class _Unreadable:
    """Bytes that do not parse as the method's request message: the client's mistake, answered
    INVALID_ARGUMENT (grpcio itself would log a traceback and answer INTERNAL)."""

    def __init__(self, message: str, error: str) -> None:
        self.message, self.error = message, error

    def refuse(self):
        raise invalid(f"the request is not a {self.message}: {' '.join(self.error.split())}")


def _reader(message_class) -> Callable[[bytes], object]:
    def read(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception as err:  # protobuf's DecodeError: whatever the bytes, not our defect
            return _Unreadable(message_class.DESCRIPTOR.full_name, str(err) or type(err).__name__)
    return read


def handlers(service, servicer: _Service) -> grpc.GenericRpcHandler:
    """``servicer``'s methods for the service ``service`` (a descriptor), as the generated
    ``add_..._to_server`` registers them, but with requests read by ``_reader``."""
    methods = {method.name: grpc.unary_unary_rpc_method_handler(
        servicer.guarded(method.name),
        request_deserializer=_reader(message_factory.GetMessageClass(method.input_type)),
        response_serializer=lambda response: response.SerializeToString())
        for method in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, methods)
