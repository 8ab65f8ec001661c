"""The Open Inference Protocol's REST front (open-inference-protocol ``inference_rest.md``),
with Triton's binary data extension (``extension_binary_data.md``) and model repository
extension (``extension_model_repository.md``), over ``consumer.serving.oip``.

``http.RestApp`` hands every ``/v2`` path here: ``route`` names the call, and the app runs it
on its worker pool under the same admission as ``/v1`` (health checks alone run on the event
loop: a liveness probe must not wait behind inferences). Bodies are bounded by the app
(``MAX_BODY_BYTES``); within one, every size the client states is checked before it is spent:
``Inference-Header-Content-Length`` against the body, each ``binary_data_size`` against the
bytes left, each shape's product against ``--max_request_elements``, and the JSON's values and
lists are counted before it is parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote

import orjson

from consumer.serving.errors import ServingError, invalid, not_found
from consumer.serving.oip import InferRequest, InferResult, Oip
from consumer.serving.oip_repository import Repository
from consumer.serving.oip_tensors import Tensor, element_count, from_json, from_raw, to_json, \
    to_raw

HEADER_LENGTH = b"inference-header-content-length"
_JSON = [(b"content-type", b"application/json")]
_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?")
_REPOSITORY = re.compile(r"/v2/repository/models/([^/]+)/(load|unload)")


@dataclass
class Response:
    status: int
    body: bytes
    headers: list
    version: int | None = None


@dataclass
class Route:
    endpoint: str  # for the metrics: oip_infer, oip_metadata...
    model: str
    call: Callable[[bytes], Response]
    inline: bool = False  # cheap and never blocked: answered on the event loop


def json_response(value, status: int = 200) -> Response:
    return Response(status, orjson.dumps(value), _JSON)


class OipRest:
    def __init__(self, oip: Oip, repository: Repository) -> None:
        self.oip, self.repository = oip, repository

    def route(self, method: str, path: str, headers: list) -> Route:
        """The call for a ``/v2`` path (its query string left off); NOT_FOUND if none."""
        path = path.split("?", 1)[0]
        if method == "GET" and path in ("/v2", "/v2/"):
            return Route("oip_server_metadata", "",
                         lambda body: json_response(self.oip.server_metadata()), inline=True)
        if method == "GET" and path == "/v2/health/live":
            return Route("oip_live", "", lambda body: json_response({"live": True}), inline=True)
        if method == "GET" and path == "/v2/health/ready":
            return Route("oip_ready", "", lambda body: _ready(self.oip.server_ready()),
                         inline=True)
        if match := _MODEL.fullmatch(path):
            return self._model_route(method, unquote(match.group(1)),
                                     unquote(match.group(2) or ""), match.group(3), headers)
        if method == "POST" and path == "/v2/repository/index":
            return Route("oip_repository_index", "", self._index)
        if method == "POST" and (match := _REPOSITORY.fullmatch(path)):
            name, verb = unquote(match.group(1)), match.group(2)
            return Route(f"oip_repository_{verb}", name,
                         lambda body: self._repository(verb, name, body))
        raise not_found(f"Not found: {method} {path}")

    def _model_route(self, method: str, model: str, version: str, tail: str | None,
                     headers: list) -> Route:
        if tail == "/infer" and method == "POST":
            length = _header_length(headers)
            return Route("oip_infer", model, lambda body: self._infer(model, version, body,
                                                                      length))
        if tail == "/ready" and method == "GET":
            return Route("oip_model_ready", model,
                         lambda body: _ready(self.oip.model_ready(model, version)), inline=True)
        if tail is None and method == "GET":
            return Route("oip_model_metadata", model,
                         lambda body: json_response(self.oip.model_metadata(model, version)))
        raise not_found(f"Not found: {method} /v2/models/{model}{tail or ''}")

    # -- inference -------------------------------------------------------------------------

    def _infer(self, model: str, version: str, body: bytes, length: int | None) -> Response:
        request, binary_default, binary = parse_infer(body, length, self.oip.max_elements)
        request.model, request.version = model, version
        result = self.oip.infer(request)
        return render_infer(result, binary_default, binary)

    # -- repository ------------------------------------------------------------------------

    def _index(self, body: bytes) -> Response:
        doc = _object(body, self.oip.max_elements) if body.strip() else {}
        ready = doc.get("ready") or False  # null, as MLServer's client sends it: all
        if not isinstance(ready, bool):
            raise invalid("'ready' must be true or false")
        return json_response(self.repository.index(ready))

    def _repository(self, verb: str, name: str, body: bytes) -> Response:
        if body.strip():
            # parameters (Triton's config and files overrides) are not taken
            _object(body, self.oip.max_elements)
        (self.repository.load if verb == "load" else self.repository.unload)(name)
        return Response(200, b"", _JSON)


def _ready(ready: bool) -> Response:
    """200 and ``{"ready": true}`` (the body KServe's client reads) when ready; 400 when not,
    as Triton answers: a probe reads the status alone."""
    return Response(200, b'{"ready":true}', _JSON) if ready else \
        Response(400, b'{"error":"not ready"}', _JSON)


def _header_length(headers: list) -> int | None:
    for name, value in headers:
        if name == HEADER_LENGTH:
            if not value.isdigit():
                raise invalid("Inference-Header-Content-Length must be a number of bytes")
            return int(value)
    return None


def _object(data: bytes, max_elements: int) -> dict:
    """The JSON object ``data`` holds, its size bounded before it is parsed: the count of commas
    and brackets is at least the count of values and lists it would allocate."""
    bound = data.count(b",") + data.count(b"[")
    if bound > max_elements:
        raise invalid(f"the request's JSON holds up to {bound} values and lists, over the limit "
                      f"of {max_elements} (--max_request_elements)")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise invalid(f"the request's JSON does not parse: {err}") from None
    if not isinstance(doc, dict):
        raise invalid("the request's JSON must be an object")
    return doc


def parse_infer(body: bytes, length: int | None,
                max_elements: int) -> tuple[InferRequest, bool, dict[str, bool]]:
    """An inference request's JSON header and binary data as an ``InferRequest``; with whether
    outputs default to binary data, and each requested output's own choice."""
    if length is not None and length > len(body):
        raise invalid(f"Inference-Header-Content-Length is {length}, over the body's "
                      f"{len(body)} bytes")
    header, data = (body, b"") if length is None else (body[:length], memoryview(body)[length:])
    doc = _object(header, max_elements)
    parameters = _parameters(doc, "the request")
    request = InferRequest("", id=_text(doc.get("id", ""), "id"), parameters=parameters)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid("the request must have 'inputs', a list of tensors")
    total, at = 0, 0
    for item in inputs:
        tensor, count, size = _input(item, max_elements - total)
        total += count
        if size is None:
            if "data" not in item:
                raise invalid(f"input '{tensor.name}' has neither 'data' nor binary_data_size")
            tensor.array = from_json(tensor, item["data"], count)
        else:
            if size > len(data) - at:
                raise invalid(f"input '{tensor.name}': binary_data_size {size} is past the "
                              f"{len(data) - at} bytes of binary data left")
            tensor.array = from_raw(tensor, data[at:at + size], count)
            at += size
        request.inputs.append(tensor)
    if at != len(data):
        raise invalid(f"{len(data) - at} bytes of binary data follow the inputs that use them")
    binary: dict[str, bool] = {}
    outputs = doc.get("outputs") or []
    if not isinstance(outputs, list):
        raise invalid("'outputs' must be a list of the outputs asked for")
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid("each of 'outputs' must be an object with a 'name'")
        request.outputs.append(item["name"])
        choice = _flag(_parameters(item, f"output '{item['name']}'"), "binary_data")
        if choice is not None:
            binary[item["name"]] = choice
    return request, bool(_flag(parameters, "binary_data_output")), binary


def _flag(parameters: dict, name: str) -> bool | None:
    """A parameter that is true or false (Triton's ``binary_data``), or None if not given: a
    string "false" is not taken for true."""
    value = parameters.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(f"parameter '{name}' must be true or false")
    return value


def _input(item, left: int) -> tuple[Tensor, int, int | None]:
    if not isinstance(item, dict):
        raise invalid("each of 'inputs' must be an object")
    name, datatype = _text(item.get("name"), "name"), _text(item.get("datatype"), "datatype")
    count = element_count(name, datatype, item.get("shape"), left)
    size = _parameters(item, f"input '{name}'").get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise invalid(f"input '{name}': binary_data_size must be a number of bytes")
    return Tensor(name, datatype, list(item["shape"])), count, size


def _parameters(doc: dict, where: str) -> dict:
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid(f"the parameters of {where} must be an object")
    return parameters


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"'{what}' must be a string")
    return value


def render_infer(result: InferResult, binary_default: bool,
                 binary: dict[str, bool]) -> Response:
    """The answer's JSON, and after it the binary data of the outputs that asked for it (or
    that JSON cannot carry: BYTES that are not UTF-8)."""
    outputs, chunks = [], []
    for tensor in result.outputs:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        values = None if binary.get(tensor.name, binary_default) else \
            to_json(tensor.array, tensor.datatype)
        if values is None:
            raw = to_raw(tensor.array, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = values
        outputs.append(entry)
    doc = {"model_name": result.model, "model_version": str(result.version),
           "outputs": outputs}
    if result.id:
        doc["id"] = result.id
    header = orjson.dumps(doc)
    version = [(b"x-model-version", str(result.version).encode())]
    if not chunks:
        return Response(200, header, _JSON + version, result.version)
    return Response(200, b"".join([header, *chunks]),
                    [(b"content-type", b"application/octet-stream"),
                     (HEADER_LENGTH, str(len(header)).encode())] + version, result.version)


def error(err: ServingError) -> Response:
    """A ``ServingError`` as the protocol's ``{"error": "..."}`` with its 4xx/5xx."""
    return Response(err.http_status, orjson.dumps({"error": err.message}), _JSON)
