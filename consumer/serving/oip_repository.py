"""The model repository extension (Triton's ``extension_model_repository.md``) over the model
config: the repository is the models ``--model_config_file`` lists, read from the file at each
call; ``index`` lists them with their state, ``load`` adds one to the running config (or
reapplies its entry) and waits for its first version, ``unload`` removes one from the running
config, each version unloaded after its last request.

An operator's act, like gRPC's ``HandleReloadConfigRequest``: refused (FAILED_PRECONDITION)
unless the server runs from a model config file. A change to the file itself still applies
the whole file, as it always does (with ``--model_config_file_poll_wait_seconds``): a model
unloaded here comes back if the file is edited and still lists it.
"""

from __future__ import annotations

from pathlib import Path

from consumer.serving import config
from consumer.serving.errors import ServingError, not_found
from consumer.serving.reload import Reloader


class Repository:
    def __init__(self, reloader: Reloader | None, config_file: Path | None) -> None:
        self.reloader, self.config_file = reloader, config_file

    def _entries(self) -> dict:
        if self.reloader is None or self.config_file is None:
            raise ServingError("FAILED_PRECONDITION",
                               "the model repository is not available: the server does not run "
                               "from --model_config_file (loads and unloads change the model "
                               "config, an operator's act)")
        try:
            return {spec.name: spec for spec in config.load(self.config_file)}
        except config.ConfigError as err:
            raise ServingError("FAILED_PRECONDITION", f"the model repository cannot be read: "
                                                      f"{err}") from None

    def index(self, ready_only: bool = False) -> list[dict]:
        """Every model the repository holds or the server serves, with its versions' states:
        ``READY`` for a version that answers, ``UNAVAILABLE`` (with a reason) otherwise."""
        entries = self._entries()
        models = self.reloader.models
        rows = []
        for name in sorted(set(entries) | {m.name for m in models if m.name}):
            served = models.get(name)
            if served is None:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
                continue
            states = served.status() or []
            if not states:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": "loading"})
            for step, state in states:
                ready = state.state == "AVAILABLE"
                row = {"name": name, "version": str(step),
                       "state": "READY" if ready else "UNAVAILABLE"}
                if not ready:
                    row["reason"] = state.error_message or state.state
                rows.append(row)
        return [row for row in rows if row["state"] == "READY"] if ready_only else rows

    def load(self, name: str) -> None:
        spec = self._entries().get(name)
        if spec is None:
            raise not_found(f"Model {name} not found")  # in the config file: MLServer's words
        if not self.reloader.load(spec):
            raise ServingError("UNAVAILABLE", f"failed to load '{name}': no version became "
                                              "available in time (its loads go on)")

    def unload(self, name: str) -> None:
        self._entries()  # refused as a load is, without a config file
        if not self.reloader.unload(name):
            raise not_found(f"failed to unload '{name}': no model of that name is served")
