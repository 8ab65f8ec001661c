"""``python -m consumer``: watch an export dir and evaluate, continue training or serve each new
version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from consumer import hugepages, remote_base
from consumer.remote_base import RemoteBase
from shared import cli, commit, datasets, dirlock, layout, logs

PROG = "consumer"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--export-dir", type=_export_dir, default=Path("exports"),
                        help="a local export dir, or s3://bucket/prefix or gs://bucket/prefix "
                             "(a producer's --export-dir there): its complete versions are "
                             "copied into the work dir as they come")
    parser.add_argument("--work-dir", type=Path, default=Path("work"),
                        help="evaluations.jsonl, and in train mode the consumer's own versions")
    parser.add_argument("--source", choices=("savedmodel", "checkpoint"), default="savedmodel")
    parser.add_argument("--mode", choices=("evaluate", "train", "serve"), default="evaluate")
    parser.add_argument("--train-steps", type=cli.positive_int, default=100, metavar="N")
    parser.add_argument("--until-step", type=cli.non_negative_int, default=None, metavar="N",
                        help="exit 0 once a version with step >= N has been handled; exit 1 "
                             "if the first such version is refused")
    parser.add_argument("--max-publish-failures", type=cli.positive_int, default=3, metavar="N",
                        help="train mode: exit 1 after N failed publishes in a row (a full "
                             "disk); each one is logged and the next version tries again")
    parser.add_argument("--poll", type=cli.positive_float, default=None, metavar="SECONDS",
                        help="poll instead of inotify (network filesystems); an s3:// or "
                             "gs:// export dir is polled this often (default 1)")
    parser.add_argument("--rescan", type=cli.positive_float, default=5.0, metavar="SECONDS",
                        help="periodic rescan that catches events inotify dropped")
    parser.add_argument("--full-loads", action="store_true",
                        help="import every version's graph afresh, never the warm swap")
    serve = parser.add_argument_group("serve mode (TF Serving's REST and gRPC APIs)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine "
                                      "only)")
    serve.add_argument("--port", type=cli.port, help="REST port (TF Serving's 8501); 0 picks a "
                                                     "free port")
    serve.add_argument("--grpc-port", type=cli.port,
                       help="gRPC port (TF Serving's 8500); 0 picks a free port")
    serve.add_argument("--model-name",
                       help="the name in /v1/models/NAME (default: export.json's model)")
    serve.add_argument("--max-regression", type=cli.non_negative_float, metavar="R",
                       help="refuse a version whose loss on the gate's data is above live + R * "
                            "max(live, --regression-floor): the live loss may be 0 and an equal "
                            "version passes")
    serve.add_argument("--regression-floor", type=cli.non_negative_float, metavar="F",
                       help="the smallest loss a regression is measured against (default 0.001)")
    serve.add_argument("--gate-dataset", type=datasets.spec_argument, metavar="JSON",
                       help="the data every candidate and the live version are scored on, as a "
                            "catalog spec (default: the live version's own)")
    parser.add_argument("--log-format", choices=logs.FORMATS, default=None)
    args = parser.parse_args(argv)
    if args.mode == "serve" and args.source != "savedmodel":
        parser.error("--mode serve needs --source savedmodel: a checkpoint has no serving graph")
    if isinstance(args.export_dir, RemoteBase) and args.source != "savedmodel":
        parser.error(f"--export-dir {args.export_dir} holds SavedModels only (the producer "
                     "uploads no checkpoints): --source savedmodel")
    given = [f"--{name.replace('_', '-')}" for name in SERVE_DEFAULTS
             if getattr(args, name) is not None]
    if given and args.mode != "serve":
        parser.error(f"{', '.join(given)} belong{'s' if len(given) == 1 else ''} to --mode "
                     f"serve, not --mode {args.mode}")
    for name, default in SERVE_DEFAULTS.items():  # given as None above: was it given at all?
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


# Serve mode's options and their defaults: None in the parser, so that one given in another
# mode is seen (and refused) rather than quietly ignored.
SERVE_DEFAULTS = {"host": "127.0.0.1", "port": 8501, "grpc_port": 8500, "model_name": None,
                  "max_regression": None, "regression_floor": 1e-3, "gate_dataset": None}


def _export_dir(text: str) -> Path | RemoteBase:
    try:
        return remote_base.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _check_dirs(args: argparse.Namespace) -> None:
    """Refuse bad directories before TensorFlow loads."""
    if isinstance(args.export_dir, RemoteBase):
        commit.check_writable_dir(args.work_dir, "work dir")  # the mirror's cache is in it
        return
    if args.export_dir.exists() and not args.export_dir.is_dir():
        raise layout.LayoutError(f"export dir {args.export_dir} is a file, not a directory")
    if args.work_dir.resolve() == args.export_dir.resolve():
        raise layout.LayoutError("work dir must differ from the export dir: the consumer never "
                                 "writes into the producer's directory")
    commit.check_writable_dir(args.work_dir, "work dir")


def main(argv: list[str] | None = None) -> int:
    hugepages.reexec_with_huge_pages(argv)  # first: before TensorFlow, any allocation, any lock
    args = parse_args(argv)
    logs.configure(args.log_format)
    stop = cli.stop_on_signals()
    hugepages.unblock_signals()  # a stop signal sent during the re-exec is handled now
    try:
        _check_dirs(args)
    except layout.LayoutError as err:
        cli.fail(PROG, str(err))

    if args.mode == "train":  # it publishes into its work dir: one writer there
        try:
            dirlock.hold(args.work_dir, PROG)
        except dirlock.DirLocked as err:
            cli.fail(PROG, str(err))
    from consumer.loop import Config, Consumer  # TensorFlow loads here

    config = Config(export_dir=args.export_dir, work_dir=args.work_dir, source=args.source,
                    mode=args.mode, train_steps=args.train_steps, until_step=args.until_step,
                    poll=args.poll, rescan=args.rescan, max_regression=args.max_regression,
                    regression_floor=args.regression_floor, gate_dataset=args.gate_dataset,
                    warm_swap=not args.full_loads,
                    max_publish_failures=args.max_publish_failures,
                    store_poll=args.poll or 1.0)  # on s3:// or gs://: --poll, else 1 s
    log = logs.get(PROG)
    if args.mode == "serve":
        from consumer.serving import server

        local = remote_base.cache_dir(args.work_dir, args.export_dir) \
            if isinstance(args.export_dir, RemoteBase) else args.export_dir  # export.json's
        spec = server.ModelSpec(args.model_name or server.export_dir_name(local),
                                args.export_dir, source=args.source)
        options = server.Options(host=args.host, rest_port=args.port,
                                 grpc_port=args.grpc_port, work_dir=args.work_dir, loop=config)
        served = server.ModelServer(options, [spec], PROG)
        log.info("consumer_started", export_dir=str(args.export_dir), source=args.source,
                 mode=args.mode, until_step=args.until_step)
        stats = served.run(stop)
    else:
        log.info("consumer_started", export_dir=str(args.export_dir), source=args.source,
                 mode=args.mode, until_step=args.until_step)
        stats = _evaluate_or_train(config, stop)
    log.info("consumer_stopped", loaded=len(stats.loaded), failed=len(stats.failed),
             last_step=stats.loaded[-1] if stats.loaded else None)
    if stats.fatal is not None:
        sys.stderr.write(f"{PROG}: error: {stats.fatal.strip().splitlines()[0][:500]}\n")
        return 1
    return 0


def _evaluate_or_train(config, stop) -> "Stats":
    """The loop over a local export dir, or over the cache a mirror fills from a bucket."""
    from consumer.loop import Consumer, latest

    if not isinstance(config.export_dir, RemoteBase):
        return Consumer(config, stop).run()
    from consumer import mirror

    local = mirror.local_config(config)
    consumer = Consumer(local, stop)
    copier = mirror.Mirror(config.export_dir, local.export_dir, config.source,
                           mirror.loop_hooks(consumer, lambda: latest(1)),
                           poll=config.store_poll)
    copier.start()
    try:
        return consumer.run()
    finally:
        copier.close()


if __name__ == "__main__":
    sys.exit(main())
