"""The protocol-neutral calls of a model server over the manager: status, metadata, predict.

Each call takes a handle on the live version for its whole length (``Manager.handle``), so a
swap never changes the version under a request, and answers what TF Serving would answer. A
failure is an ``ApiError`` with TF Serving's status code. ``consumer.serving.http`` puts these
calls behind HTTP.
"""

from __future__ import annotations

from pathlib import Path

from consumer.manager import Manager, Servable
from consumer.serving import json_tensor
from consumer.serving.json_tensor import ApiError
from shared import layout
from shared.tfcompat import tf


class Api:
    def __init__(self, manager: Manager, export_dir: Path, model_name: str | None) -> None:
        self.manager = manager
        self.export_dir = Path(export_dir)
        self.model_name = model_name  # None: export.json's, read once it exists (see served_name)

    def status(self, name: str, version: str | None) -> dict:
        with self.manager.handle() as servable:
            servable = self._resolve(name, version, servable)
            return {"model_version_status": [{
                "version": str(servable.step), "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""}}]}

    def metadata(self, name: str, version: str | None) -> dict:
        with self.manager.handle() as servable:
            servable = self._resolve(name, version, servable)
            signatures = {key: sig.to_json() for key, sig in servable.loaded.signatures.items()}
            return {"model_spec": {"name": self.served_name(True), "signature_name": "",
                                   "version": str(servable.step)},
                    "metadata": {"signature_def": {"signature_def": signatures}}}

    def predict(self, name: str, version: str | None, body: bytes) -> tuple[bytes, int]:
        """The response body and the version that answered."""
        request = json_tensor.parse_request(body)
        with self.manager.handle() as servable:
            servable = self._resolve(name, version, servable)
            signature = servable.loaded.signatures.get(request.signature_name)
            if signature is None:
                raise ApiError(400, f"Serving signature name: \"{request.signature_name}\" not "
                                    "found in signature def")
            feeds = json_tensor.feeds(request, signature)
            fetches = {key: spec.name for key, spec in signature.outputs.items()}
            try:
                outputs = servable.loaded.session.run(fetches, feeds)
            except tf.errors.InvalidArgumentError as err:
                raise ApiError(400, _first_line(err.message)) from None
            except tf.errors.OpError as err:
                raise ApiError(500, _first_line(err.message)) from None
            step = servable.step
        return json_tensor.dumps(json_tensor.response(request, outputs)), step

    def served_name(self, live: bool = False) -> str | None:
        """The served name: ``--model-name``, else export.json's ``model``, else (once a version
        is live in an export without one) the export dir's own name."""
        if self.model_name is None:
            try:
                manifest = layout.read_manifest(self.export_dir)
            except layout.LayoutError:
                manifest = None
            if manifest is not None:
                self.model_name = manifest["model"]
            elif live:
                self.model_name = self.export_dir.resolve().name
        return self.model_name

    def _resolve(self, name: str, version: str | None, servable: Servable | None) -> Servable:
        model = self.served_name(live=servable is not None)
        if model is not None and name.lower() != model.lower():  # TF Serving: case-insensitive
            raise ApiError(404, f"Servable not found for request: Latest({name})")
        if servable is None:
            raise ApiError(503, "no version of the model is ready yet")
        if version is not None and int(version) != servable.step:
            raise ApiError(404, f"Servable not found for request: Specific({name}, {version}); "
                                f"the live version is {servable.step}")
        return servable


def _first_line(message: str) -> str:
    return (message.strip().splitlines() or [""])[0][:500]

