"""TF Serving's REST calls as bytes in and bytes out, over the protocol-neutral calls: a JSON
body to arrays, the call, the answer back to JSON, in the order TF Serving checks things (the
body parses first, then the model and version, then the signature, then the values).

A predict holds its version from before its body is parsed to the end of its run: the body is
read by that version's signature, and run by that version. A big body (``offload.OFFLOAD_BYTES``)
of any call is parsed in the helper process, a small one here, by the same function.
"""

from __future__ import annotations

from google.protobuf import json_format

from consumer.serving import examples, json_render, offload
from consumer.serving.calls import Calls, Target
from consumer.serving.errors import ServingError
from consumer.serving.json_parse import MAX_ELEMENTS


class RestApi:
    def __init__(self, calls: Calls, max_elements: int = MAX_ELEMENTS) -> None:
        self.calls = calls
        self.max_elements = max_elements
        self.offload = offload.Offload()  # big bodies and answers: in a process of their own

    def predict(self, target: Target, body: bytes) -> tuple[bytes, int]:
        try:
            servable = self.calls.acquire(target)
        except ServingError:  # TF Serving parses the body before it looks the model up
            self.offload.parse(offload.parse_predict, body, None, self.max_elements)
            raise
        try:
            specs = offload.input_specs(servable.loaded.signatures,
                                        plain=len(body) >= offload.OFFLOAD_BYTES)
            signature_name, inputs, row_format = self.offload.parse(
                offload.parse_predict, body, specs, self.max_elements)
            answer = self.calls.predict_on(target.model, servable, signature_name, inputs)
        finally:
            servable.release()
        return self.offload.render_predict(answer.result, row_format), answer.version

    def classify(self, target: Target, body: bytes) -> tuple[bytes, int]:
        signature_name, serialized = self.offload.parse(examples.parse_examples, body,
                                                        self.max_elements)
        answer = self.calls.classify(target, signature_name, serialized)
        result = answer.result
        return examples.render_classification(result.labels, result.scores), answer.version

    def regress(self, target: Target, body: bytes) -> tuple[bytes, int]:
        signature_name, serialized = self.offload.parse(examples.parse_examples, body,
                                                        self.max_elements)
        answer = self.calls.regress(target, signature_name, serialized)
        return examples.render_regression(answer.result), answer.version

    def status(self, target: Target) -> tuple[bytes, None]:
        states = self.calls.status(target.model, target.version)
        return json_render.render_json({"model_version_status": [
            {"version": str(step), "state": state.state,
             "status": {"error_code": state.error_code, "error_message": state.error_message}}
            for step, state in states]}), None

    def metadata(self, target: Target) -> tuple[bytes, int]:
        answer = self.calls.metadata(target)
        signatures = {key: json_format.MessageToDict(
            signature.proto, preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True) for key, signature in answer.result.items()}
        return json_render.render_json({
            "model_spec": {"name": target.model, "signature_name": "",
                           "version": str(answer.version)},
            "metadata": {"signature_def": {"signature_def": signatures}}}), answer.version
