"""From ``tensorflow_model_server``'s flags to a running server: the models (one from
``--model_name``/``--model_base_path``, or those of ``--model_config_file``) and the options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from consumer import loader
from consumer.loop import Config
from consumer.serving import batching, config, monitoring
from consumer.serving.json_parse import MAX_ELEMENTS
from consumer.serving.models import ModelSpec
from consumer.serving.server import ModelServer, Options
from shared import cli


def build(args: argparse.Namespace, prog: str) -> ModelServer:
    if args.model_config_file is not None:
        try:
            specs = config.load(args.model_config_file)
        except config.ConfigError as err:
            cli.fail(prog, str(err))
    else:
        base = args.model_base_path  # a Path, or a RemoteBase (flags.parse)
        specs = [ModelSpec(args.model_name, base.absolute(), "base")]
    for spec in specs:
        if spec.base_path.exists() and not spec.base_path.is_dir():  # a RemoteBase is a dir
            cli.fail(prog, f"base path {spec.base_path} of model {spec.name} is a file")
    parameters = None
    if args.enable_batching:
        try:
            parameters = batching.load_parameters(args.batching_parameters_file)
        except ValueError as err:
            cli.fail(prog, str(err))
    try:
        metrics_path = monitoring.metrics_path(args.monitoring_config_file)
    except monitoring.MonitoringConfigError as err:
        cli.fail(prog, str(err))
    many = 128  # with batching, each waiting request holds a thread until its batch has run
    rescan = args.file_system_poll_wait_seconds
    loop = Config(export_dir=Path("."), work_dir=args.work_dir, source="base", mode=loader.SERVE,
                  max_regression=args.max_regression, regression_floor=args.regression_floor,
                  gate_dataset=args.gate_dataset, warm_swap=not args.full_loads,
                  poll=args.poll, rescan=float(rescan) if rescan > 0 else 24 * 3600.0,
                  load_retries=args.max_num_load_retries,
                  load_retry_interval=args.load_retry_interval_micros / 1e6,
                  store_poll=float(rescan))  # TF Serving's meaning: 0 polls once, less never
    options = Options(host=args.host, rest_port=args.rest_api_port or None,
                      grpc_port=args.port or None, work_dir=args.work_dir,
                      loop=loop, warmup=args.enable_model_warmup,
                      warmup_iterations=max(1, args.num_request_iterations_for_warmup),
                      max_elements=args.max_request_elements or MAX_ELEMENTS,
                      grpc_arguments=args.grpc_channel_arguments,
                      config_file=args.model_config_file,
                      config_poll=float(args.model_config_file_poll_wait_seconds),
                      allow_unavailable_labels=args.allow_version_labels_for_unavailable_models,
                      batching=parameters, max_inflight=args.max_inflight_requests,
                      rest_timeout=args.rest_api_timeout_in_ms / 1000 or None,
                      cors=args.rest_api_enable_cors_support,
                      ssl_config=args.ssl_config_file, grpc_socket_path=args.grpc_socket_path,
                      grpc_health=args.enable_grpc_healthcheck_service,
                      metrics_path=metrics_path,
                      rest_threads=args.rest_api_num_threads or (many if parameters else
                                                                 os.cpu_count() or 2),
                      grpc_threads=args.grpc_max_threads or (many if parameters else 4))
    return ModelServer(options, specs, prog)
