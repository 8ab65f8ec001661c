"""The model server's wiring: one loop per model on its own thread, the REST front on its own,
over one set of calls. At a signal, the fronts stop taking requests and let those in flight
finish, and only then are the versions closed.

Both command lines end here: ``python -m consumer.model_server`` (TF Serving's flags) and
``python -m consumer --mode serve``.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from consumer import loader
from consumer.loop import Config, Stats
from consumer.serving import batching, monitoring, rpc, warmup
from consumer.serving.admission import Admission
from consumer.serving.calls import Calls
from consumer.serving.errors import ServingError
from consumer.serving.http import SHUTDOWN_GRACE_SECONDS, HttpServer
from consumer.serving.json_parse import MAX_ELEMENTS
from consumer.serving.metrics import ServingMetrics
from consumer.serving.models import ModelSpec, Models, ServedModel  # noqa: F401 - for callers
from consumer.serving.oip import Oip
from consumer.serving.oip_grpc import add_service as oip_service
from consumer.serving.oip_repository import Repository
from consumer.serving.oip_rest import OipRest
from consumer.serving.reload import ConfigFileWatcher, Reloader
from consumer.serving.rest import RestApi
from shared import cli, layout, logs

log = logs.get("consumer")

_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


@dataclass
class Options:
    host: str
    rest_port: int | None  # None: no REST front; 0: a free port
    grpc_port: int | None  # None: no gRPC front; 0: a free port
    work_dir: Path
    loop: Config  # the loop's settings every model shares (its export dir and source are each
    #               model's own)
    warmup: bool = True
    warmup_iterations: int = 1
    max_elements: int = MAX_ELEMENTS
    grpc_arguments: str = ""  # --grpc_channel_arguments
    batching: batching.Parameters | None = None  # None: every request runs alone
    max_inflight: int | None = 32  # without batching: requests in flight, past it 503
    rest_threads: int = 2  # REST requests parsed and run at once (the cores: more fight over
    #                        the GIL; with batching, many, each waiting for its batch)
    grpc_threads: int = 4
    config_file: Path | None = None  # --model_config_file, read again when it changes...
    config_poll: float = 0  # ...if this is > 0 (its poll interval, behind inotify)
    allow_unavailable_labels: bool = False
    rest_timeout: float | None = 30.0  # --rest_api_timeout_in_ms, in seconds; None: no limit
    cors: bool = False  # --rest_api_enable_cors_support
    ssl_config: Path | None = None  # --ssl_config_file
    grpc_socket_path: str = ""  # --grpc_socket_path: gRPC on a Unix socket too
    grpc_health: bool = False  # --enable_grpc_healthcheck_service
    # where the REST port serves the metrics (--monitoring_config_file); None: nowhere
    metrics_path: str | None = monitoring.DEFAULT_PATH


def dir_name(model: str) -> str:
    """A model's name as one directory name under the work dir: names are not paths, so
    ``/tmp/x``, ``../x`` or ``.`` cannot write outside it. Plain names stay as they are."""
    if _PLAIN_NAME.fullmatch(model) and not model.startswith("."):
        return model
    return quote(model, safe="").replace(".", "%2E") or "%00"


def _local(host: str) -> str:
    """An address to reach ``host`` from this machine: every interface is reached at loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)


def export_dir_name(export_dir: Path) -> Callable[[], str | None]:
    """An export dir's model name, once it is known: export.json's ``model``, else (for an
    export dir with versions and no manifest) the directory's own name."""
    def name() -> str | None:
        try:
            manifest = layout.read_manifest(export_dir)
        except layout.LayoutError:
            manifest = None
        if manifest is not None:
            return manifest["model"]
        return Path(export_dir).resolve().name if layout.has_versions(export_dir) else None
    return name


class ModelServer:
    def __init__(self, options: Options, specs: list[ModelSpec], prog: str) -> None:
        self.options = options
        self.metrics = ServingMetrics()
        self.models = Models()
        self.batcher = batching.Batcher(options.batching, self.metrics) \
            if options.batching is not None else None
        self.calls = Calls(self.models, self.batcher, self.metrics)
        admission = Admission(options.max_inflight)  # with batching, a batch holds one place
        self.http = self.grpc = None
        try:
            grpc_options = rpc.channel_options(options.grpc_arguments)
        except ValueError as err:
            cli.fail(prog, str(err))
        port = options.rest_port
        self.rest = RestApi(self.calls, options.max_elements)
        self.reloader = Reloader(self.models, self._model,
                                 allow_unavailable_labels=options.allow_unavailable_labels)
        # the Open Inference Protocol on both ports; its repository extension only from a
        # config file (a load or an unload changes the config: an operator's act)
        from_config = options.config_file is not None
        self.oip = Oip(self.calls, options.max_elements, repository=from_config)
        repository = Repository(self.reloader if from_config else None, options.config_file)
        try:
            if options.rest_port is not None:
                self.http = HttpServer(self.rest, self.metrics, options, admission,
                                       OipRest(self.oip, repository))
            port = options.grpc_port
            if options.grpc_port is not None:
                # a reload points the server at any directory: an operator's act, taken only
                # by a server that runs from a config file
                reload = self.reload_config if options.config_file is not None else None
                self.grpc = rpc.GrpcServer(self.calls, self.metrics, options, grpc_options,
                                           reload, admission, services=(oip_service(
                                               self.oip, repository, self.metrics, admission),))
        except rpc.StartError as err:  # TLS or the Unix socket as configured cannot be used
            cli.fail(prog, str(err))
        except (OSError, RuntimeError) as err:
            cli.fail(prog, f"cannot listen on {options.host}:{port}: "
                           f"{getattr(err, 'strerror', None) or err}")
        try:
            self.reloader.check(specs)  # a label the first config cannot keep: exit 2
        except ServingError as err:
            cli.fail(prog, err.message)
        for spec in specs:
            self.models.add(self._model(spec))
        self.reloader.specs = list(specs)  # the config the repository's loads start from

    def _model(self, spec: ModelSpec) -> ServedModel:
        work_dir = self.options.work_dir
        if isinstance(spec.name, str) and spec.source == "base":
            work_dir = work_dir / dir_name(spec.name)  # several models: each its own records
        config = replace(self.options.loop, export_dir=spec.base_path, work_dir=work_dir,
                         source=spec.source, mode=loader.SERVE)
        return ServedModel(spec.name, config, policy=spec.policy,
                           prepare=functools.partial(self._prepare, spec.name),
                           labels=spec.labels, metrics=self.metrics, batcher=self.batcher)

    def _prepare(self, name: str | None, loaded: loader.Loaded) -> None:
        """Before the gate: count the load in TF Serving's load metrics, then replay the
        version's warm-up records (with --enable_model_warmup), timed in its warm-up metrics."""
        model, step, path = name or "", loaded.version.step, str(loaded.version.path)
        self.metrics.load_timed(model, step, path, sum(loaded.phases.values()), True)
        if not self.options.warmup:
            return
        started, records, status = time.perf_counter(), 0, "OK"
        try:
            records = warmup.replay(loaded, self.options.warmup_iterations)
        except Exception:
            status = "FAILED_PRECONDITION"  # refused: the gate says why
            raise
        finally:
            if records or status != "OK":  # a version without warm-up records has no series
                self.metrics.warmup_timed(model, step, path, time.perf_counter() - started,
                                          records, status)

    def run(self, stop: threading.Event) -> Stats:
        """Serve until ``stop`` is set (or, with an ``until_step``, until every model's loop has
        reached it); the stats of the first model, for the exit code."""
        models = list(self.models)
        for model in models:
            model.start()
        for front in (self.http, self.grpc):
            if front is not None:
                front.start()
        watcher = None
        if self.options.config_file is not None and self.options.config_poll > 0:
            watcher = ConfigFileWatcher(self.options.config_file, self.options.config_poll,
                                        self.reloader, stop)
            watcher.start()
        names = [m.name or "<from export.json>" for m in models]
        rest = self.http.port if self.http else None
        log.info("serving", host=self.options.host, port=rest,
                 grpc_port=self.grpc.port if self.grpc else None, models=names,
                 url=f"http://{_local(self.options.host)}:{rest}/v1/models/{names[0]}"
                 if rest else None)
        # The server runs until a stop signal, whatever happens to its models: each model's loop
        # is supervised on its own thread. Only ``--until-step`` (python -m consumer) ends it
        # early, once every loop has reached that step or given up on it.
        until = self.options.loop.until_step is not None
        try:
            while not stop.wait(0.25):
                if until and all(not m.thread.is_alive() for m in models):
                    break
        finally:
            if watcher is not None:
                watcher.close()
            # new requests are refused and those in flight finish, on both fronts at once
            closing = [threading.Thread(target=front.stop, args=(SHUTDOWN_GRACE_SECONDS,))
                       for front in (self.http, self.grpc) if front is not None]
            for thread in closing:
                thread.start()
            for thread in closing:
                thread.join()
            self.rest.offload.close()
            if self.batcher is not None:
                self.batcher.close()
            for model in list(self.models):
                model.finish(timeout=60)
        return models[0].stats if models and models[0].stats else Stats()

    def reload_config(self, message) -> None:
        """gRPC's HandleReloadConfigRequest: a ``ModelServerConfig`` to apply."""
        self.reloader.apply_request(message)
