"""The Open Inference Protocol's gRPC front: ``inference.GRPCInferenceService`` (KServe's
``grpc_predict_v2.proto``, generated into ``oip_pb2``) over ``consumer.serving.oip``, on the
server's gRPC port beside TF Serving's services (``rpc.GrpcServer``'s ``services``).

Inputs are taken in either form the spec allows: ``raw_input_contents`` (what
``tritonclient.grpc`` sends) or typed ``contents``; answers are always in
``raw_output_contents``, which ``tritonclient.grpc``'s ``as_numpy`` and KServe's client read.
Inference, metadata and the repository run as TF Serving's calls run (admission, deadline,
metrics, errors as gRPC codes with one line: ``grpc_services._Service``); liveness and
readiness answer at once, never waiting for a place.

The repository calls take KServe's messages (``model_name`` = 1) and Triton's (``model_name``
= 2, after ``repository_name``), which share the method names; Triton's ``RepositoryIndex``,
which KServe's proto has not, is served too (``tritonclient.grpc``'s
``get_model_repository_index``).
"""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from consumer.serving import oip_pb2 as pb
from consumer.serving.errors import invalid
from consumer.serving.grpc_services import _reader, _Service, handlers
from consumer.serving.oip import InferRequest, Oip
from consumer.serving.oip_repository import Repository
from consumer.serving.oip_tensors import DTYPES, Tensor, element_count, from_raw, to_raw

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# the typed contents' field for each datatype (inference_grpc.md, "Tensor Data")
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _triton_messages() -> dict:
    """Triton's repository messages that KServe's proto has not, or has otherwise: its
    RepositoryModelLoad/UnloadRequest (``repository_name`` = 1, ``model_name`` = 2) and its
    RepositoryIndexRequest/Response (grpc_service.proto in triton-inference-server/common), in
    a pool of their own: they share their full names with KServe's messages."""
    types = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="oip_triton_repository.proto",
                                              package="oip_triton", syntax="proto3")

    def message(name: str, *fields: tuple) -> None:
        added = file.message_type.add(name=name)
        for number, field_name, kind, *repeated in fields:
            added.field.add(name=field_name, number=number, type=kind, type_name=repeated[1]
                            if len(repeated) > 1 else None,
                            label=types.LABEL_REPEATED if repeated and repeated[0]
                            else types.LABEL_OPTIONAL)
    text = types.TYPE_STRING
    message("RepositoryModelRequest", (1, "repository_name", text), (2, "model_name", text))
    message("RepositoryIndexRequest", (1, "repository_name", text), (2, "ready", types.TYPE_BOOL))
    message("ModelIndex", (1, "name", text), (2, "version", text), (3, "state", text),
            (4, "reason", text))
    message("RepositoryIndexResponse",
            (1, "models", types.TYPE_MESSAGE, True, ".oip_triton.ModelIndex"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {m.name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"oip_triton.{m.name}")) for m in file.message_type}


_TRITON = _triton_messages()
_TRITON_REQUEST = _TRITON["RepositoryModelRequest"]


class OipService(_Service):
    def __init__(self, oip: Oip, repository: Repository, metrics, admission) -> None:
        super().__init__(oip.calls, metrics, admission=admission, max_elements=oip.max_elements)
        self.oip, self.repository = oip, repository

    # -- health and metadata: at once -------------------------------------------------------

    def ServerLive(self, request, context):  # noqa: N802 - gRPC's method names
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=self.oip.server_ready())

    def ModelReady(self, request, context):  # noqa: N802
        return pb.ModelReadyResponse(ready=self.oip.model_ready(request.name, request.version))

    def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(**self.oip.server_metadata())

    def ModelMetadata(self, request, context):  # noqa: N802
        def call():
            doc = self.oip.model_metadata(request.name, request.version)
            response = pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"],
                                                platform=doc["platform"])
            for side in ("inputs", "outputs"):
                for tensor in doc[side]:
                    getattr(response, side).add(**tensor)
            return response, None
        return self._serve("oip_model_metadata", request.name, context, call)

    # -- inference --------------------------------------------------------------------------

    def ModelInfer(self, request, context):  # noqa: N802
        def call():
            result = self.oip.infer(self._request(request))
            response = pb.ModelInferResponse(model_name=result.model,
                                             model_version=str(result.version), id=result.id)
            for tensor in result.outputs:
                response.outputs.add(name=tensor.name, datatype=tensor.datatype,
                                     shape=tensor.shape)
                response.raw_output_contents.append(to_raw(tensor.array, tensor.datatype))
            return response, result.version
        return self._serve("oip_infer", request.model_name, context, call)

    def _request(self, message) -> InferRequest:
        raw = message.raw_input_contents
        if raw and len(raw) != len(message.inputs):
            raise invalid(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs")
        request = InferRequest(message.model_name, message.model_version, message.id,
                               _parameters(message.parameters),
                               outputs=[output.name for output in message.outputs])
        left = self.max_elements
        for index, item in enumerate(message.inputs):
            count = element_count(item.name, item.datatype, list(item.shape), left)
            left -= count
            tensor = Tensor(item.name, item.datatype, list(item.shape))
            tensor.array = from_raw(tensor, raw[index], count) if raw else \
                _from_contents(tensor, item, count)
            request.inputs.append(tensor)
        return request

    # -- repository -------------------------------------------------------------------------

    def RepositoryModelLoad(self, request, context):  # noqa: N802
        name = _repository_model(request)

        def call():
            self.repository.load(name)
            return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True), None
        return self._serve("oip_repository_load", name, context, call)

    def RepositoryModelUnload(self, request, context):  # noqa: N802
        name = _repository_model(request)

        def call():
            self.repository.unload(name)
            return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True), None
        return self._serve("oip_repository_unload", name, context, call)


    def RepositoryIndex(self, request, context):  # noqa: N802 - Triton's, not in KServe's proto
        def call():
            rows = self.repository.index(request.ready)
            return _TRITON["RepositoryIndexResponse"](
                models=[_TRITON["ModelIndex"](**row) for row in rows]), None
        return self._serve("oip_repository_index", "", context, call)


def _repository_model(request) -> str:
    """The model a repository call names, in KServe's form or Triton's (its ``model_name`` is
    field 2, which KServe's message keeps as an unknown field)."""
    triton = _TRITON_REQUEST.FromString(request.SerializeToString())
    return triton.model_name or request.model_name


def _parameters(parameters) -> dict:
    return {key: getattr(value, value.WhichOneof("parameter_choice"))
            for key, value in parameters.items() if value.WhichOneof("parameter_choice")}


def _from_contents(tensor: Tensor, item, count: int) -> np.ndarray:
    """An input sent in typed ``contents``: the field its datatype uses, of ``count`` values."""
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        raise invalid(f"input '{tensor.name}': {tensor.datatype} must be sent in "
                      "raw_input_contents")
    values = getattr(item.contents, field)
    if len(values) != count:
        raise invalid(f"input '{tensor.name}': {len(values)} values in contents, where shape "
                      f"{tensor.shape} takes {count}")
    dtype = DTYPES[tensor.datatype]
    if tensor.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(tensor.shape)
    wide = {"i": np.int64, "u": np.uint64}.get(dtype.kind, dtype)  # checked, then narrowed
    array = np.array(values, dtype=wide)
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise invalid(f"input '{tensor.name}': a value is out of the range of "
                          f"{tensor.datatype}")
    return array.astype(dtype).reshape(tensor.shape)


def add_service(oip: Oip, repository: Repository, metrics, admission):
    """The ``rpc.Service`` that puts this front on a gRPC server: its handlers (requests read
    as TF Serving's are: bytes that do not parse are INVALID_ARGUMENT), its name for
    reflection."""
    servicer = OipService(oip, repository, metrics, admission)

    index = grpc.unary_unary_rpc_method_handler(
        servicer.guarded("RepositoryIndex"),
        request_deserializer=_reader(_TRITON["RepositoryIndexRequest"]),
        response_serializer=lambda response: response.SerializeToString())

    def add(server: grpc.Server) -> list[str]:
        server.add_generic_rpc_handlers([handlers(SERVICE, servicer),
                                         grpc.method_handlers_generic_handler(
                                             SERVICE.full_name, {"RepositoryIndex": index})])
        return [SERVICE.full_name]
    return add

