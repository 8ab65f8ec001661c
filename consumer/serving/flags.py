"""``tensorflow_model_server``'s command line, as ``python -m consumer.model_server`` takes it.

Every flag TF Serving has is accepted under its own name and default, as ``--flag=value`` or
``--flag value``; booleans also bare (``--enable_batching``) or as ``=true``/``=false``. The flags
we implement change what the server does; the others (TLS, TPU, thread-pool tuning...) are
accepted so that an existing deployment's command line starts, and each one given is named in
one ``flags_ignored`` log event. A flag that TF Serving does not have is an error (exit 2), where
TF Serving prints "unknown argument" and starts anyway: a typo should not pass unseen.

Our own flags, where TF Serving has none, are listed under their own heading in ``--help``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from consumer import remote_base
from shared import cli, datasets, logs

PROG = "model_server"

# TF Serving flags we accept and do not act on: name -> the default TF Serving gives it.
IGNORED = {
    "enable_per_model_batching_parameters": False, "num_load_threads": 0,
    "num_unload_threads": 0,
    "flush_filesystem_caches": True, "tensorflow_session_parallelism": 0,
    "tensorflow_session_config_file": "", "tensorflow_intra_op_parallelism": 0,
    "tensorflow_inter_op_parallelism": 0, "use_alts_credentials": False,
    "platform_config_file": "", "per_process_gpu_memory_fraction": 0.0,
    "remove_unused_fields_from_bundle_metagraph": True, "prefer_tflite_model": False,
    "num_tflite_pools": 0, "num_tflite_interpreters_per_pool": 1,
    "enable_signature_method_name_check": False, "xla_cpu_compilation_enabled": False,
    "xla_gpu_compilation_enabled": False, "enable_profiler": True,
    "thread_pool_factory_config_file": "", "mixed_precision": "", "skip_initialize_tpu": False,
    "enable_serialization_as_tensor_content": False,
}


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _bool_flag(group, name: str, default: bool, help: str) -> None:
    group.add_argument(f"--{name}", type=boolean, nargs="?", const=True, default=default,
                       metavar="BOOL", help=help)


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog=PROG, allow_abbrev=False, description=(
        "Serve SavedModels with TF Serving's REST and gRPC APIs, its model config and batching, "
        "under tensorflow_model_server's own flags. Versions are the numbered children of each "
        "model's base path, watched with inotify."))
    tfs = p.add_argument_group("tensorflow_model_server's flags")
    tfs.add_argument("--port", type=cli.port, default=8500,
                     help="gRPC port (default 8500; 0: no gRPC, where TF Serving refuses to start)")
    tfs.add_argument("--rest_api_port", type=cli.port, default=8501,
                     help="REST port (default 8501, as TF Serving's Docker image; 0: no REST)")
    tfs.add_argument("--rest_api_timeout_in_ms", type=cli.non_negative_int, default=30000,
                     help="a REST request not answered in this long gets 504 / "
                          "DEADLINE_EXCEEDED (default 30000; 0: no limit)")
    tfs.add_argument("--model_name", default="default", help="the served model's name")
    tfs.add_argument("--model_base_path", default=None,
                     help="its versions are the numbered directories inside: a local path, "
                          "s3://bucket/prefix or gs://bucket/prefix (copied into --work_dir "
                          "version by version, complete versions only)")
    tfs.add_argument("--model_config_file", type=Path, default=None,
                     help="a ModelServerConfig in text format: several models, version policies "
                          "and labels (then --model_name and --model_base_path are ignored, as "
                          "in TF Serving)")
    tfs.add_argument("--model_config_file_poll_wait_seconds", type=cli.non_negative_int,
                     default=0, help="re-read the config file this often (0: only at start)")
    tfs.add_argument("--file_system_poll_wait_seconds", type=int, default=1,
                     help="a rescan of the base paths this often, behind inotify (default 1; "
                          "0 or less: inotify alone); an s3:// or gs:// base path is polled this "
                          "often (0: once, less: never, as TF Serving)")
    _bool_flag(tfs, "enable_model_warmup", True,
               "replay assets.extra/tf_serving_warmup_requests before a version serves")
    tfs.add_argument("--num_request_iterations_for_warmup", type=cli.non_negative_int, default=0,
                     help="run each warm-up record this many times (0: once)")
    _bool_flag(tfs, "enable_batching", False, "merge concurrent requests into batched runs")
    tfs.add_argument("--batching_parameters_file", type=Path, default=None,
                     help="BatchingParameters in text format")
    _bool_flag(tfs, "allow_version_labels_for_unavailable_models", False,
               "let a new label point at a version that is not available yet")
    tfs.add_argument("--rest_api_num_threads", type=cli.positive_int, default=None,
                     help="REST requests parsed and run at once (default: the cores, 2 here, "
                          "as more fight over Python's GIL; with batching, 128, each waiting "
                          "for its batch)")
    tfs.add_argument("--grpc_max_threads", type=cli.positive_int, default=None,
                     help="gRPC calls run at once (default 4; with batching, 128)")
    tfs.add_argument("--grpc_channel_arguments", default="",
                     help="key=value,... e.g. grpc.max_receive_message_length=4194304")
    tfs.add_argument("--max_num_load_retries", type=cli.non_negative_int, default=5,
                     help="a version that fails to load is tried again this many times "
                          "(default 5); again at once whenever its files change")
    tfs.add_argument("--load_retry_interval_micros", type=cli.non_negative_int,
                     default=60_000_000, help="between those tries (default 60 s)")
    tfs.add_argument("--ssl_config_file", type=Path, default=None,
                     help="SSLConfig in text format (server_key, server_cert, custom_ca, "
                          "client_verify): the gRPC port speaks TLS")
    tfs.add_argument("--monitoring_config_file", type=Path, default=None,
                     help="MonitoringConfig in text format: prometheus_config { enable: true "
                          "path: \"/metrics\" } serves TF Serving's Prometheus series on the "
                          "REST port at that path (default: /monitoring/prometheus/metrics "
                          "without the file; none with enable: false)")
    _bool_flag(tfs, "enable_grpc_healthcheck_service", False,
               "grpc.health.v1.Health on the gRPC port: SERVING while every model has a "
               "version available")
    tfs.add_argument("--grpc_socket_path", default="",
                     help="also serve gRPC on this Unix socket")
    _bool_flag(tfs, "rest_api_enable_cors_support", False,
               "answer CORS preflights and add CORS headers to REST answers")
    tfs.add_argument("--saved_model_tags", default="serve",
                     help="the meta graph to serve (only 'serve' here)")
    _bool_flag(tfs, "version", False, "print the version and exit")
    for name, default in IGNORED.items():
        if isinstance(default, bool):
            _bool_flag(tfs, name, default, argparse.SUPPRESS)
        else:
            tfs.add_argument(f"--{name}", type=type(default), default=default,
                             help=argparse.SUPPRESS)
    ours = p.add_argument_group("tf-handoff's own flags")
    ours.add_argument("--host", default="0.0.0.0",
                      help="address both ports listen on. Default 0.0.0.0, every interface, as "
                           "TF Serving (so a container's command line carries over); "
                           "127.0.0.1 for this machine only")
    ours.add_argument("--work_dir", type=Path, default=Path("work"),
                      help="where evaluations and the gate's decisions are recorded, one "
                           "directory per model (default ./work)")
    ours.add_argument("--max_request_elements", type=cli.positive_int, default=None,
                      metavar="N", help="refuse a JSON body with more than N values and lists, "
                                        "counted before it is parsed (default 1048576)")
    ours.add_argument("--max_inflight_requests", type=cli.positive_int, default=32,
                      metavar="N", help="requests running at once, both protocols together "
                                        "(with batching, a batch counts once); one past N "
                                        "waits at most half of --rest_api_timeout_in_ms, then "
                                        "503 / UNAVAILABLE (default 32)")
    ours.add_argument("--max_regression", type=cli.non_negative_float, default=None,
                      metavar="R", help="refuse a version whose loss on the gate's data is above "
                                        "live + R * max(live, --regression_floor): the live "
                                        "version's loss may be 0 and an equal version passes")
    ours.add_argument("--regression_floor", type=cli.non_negative_float, default=1e-3,
                      metavar="F", help="the smallest loss a regression is measured against "
                                        "(default 0.001)")
    ours.add_argument("--gate_dataset", type=datasets.spec_argument, default=None, metavar="JSON",
                      help="the data every candidate and the live version are scored on, as a "
                           "catalog spec, e.g. '{\"name\": \"linear\", \"seed\": 0}' "
                           "(default: the live version's own)")
    ours.add_argument("--poll", type=cli.positive_float, default=None, metavar="SECONDS",
                      help="poll the base paths instead of inotify (network filesystems)")
    ours.add_argument("--full_loads", action="store_true",
                      help="import every version afresh, never the warm swap")
    ours.add_argument("--log_format", choices=logs.FORMATS, default=None)
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.version:
        return args
    if args.model_config_file is None and args.model_base_path is None:
        p.error("Both --model_base_path and --model_config_file are empty: give one")
    if args.model_base_path is not None:
        try:  # s3:// and gs:// are mirrored into the work dir (consumer.mirror)
            args.model_base_path = remote_base.parse(args.model_base_path)
        except ValueError as err:
            p.error(f"--model_base_path {err}")
    if args.batching_parameters_file is not None and not args.enable_batching:
        p.error("--batching_parameters_file is set without --enable_batching")
    if args.saved_model_tags != "serve":
        p.error(f"--saved_model_tags={args.saved_model_tags}: only 'serve' is served here")
    if args.rest_api_port and args.rest_api_port == args.port:
        p.error(f"--rest_api_port and --port are both {args.port}: give them different ports")
    if not args.rest_api_port and not args.port:
        p.error("--rest_api_port=0 and --port=0: nothing to serve on")
    return args


def ignored(args: argparse.Namespace) -> list[str]:
    """The TF Serving flags given that this server does not act on."""
    return sorted(name for name, default in IGNORED.items() if getattr(args, name) != default)
