"""``python -m consumer``: watch an export dir and evaluate or continue training each new version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared import cli, layout, logs

PROG = "consumer"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--export-dir", type=Path, default=Path("exports"))
    parser.add_argument("--work-dir", type=Path, default=Path("work"),
                        help="evaluations.jsonl, and in train mode the consumer's own versions")
    parser.add_argument("--source", choices=("savedmodel", "checkpoint"), default="savedmodel")
    parser.add_argument("--mode", choices=("evaluate", "train"), default="evaluate")
    parser.add_argument("--train-steps", type=cli.positive_int, default=100, metavar="N")
    parser.add_argument("--until-step", type=cli.non_negative_int, default=None, metavar="N",
                        help="exit 0 once a version with step >= N has been handled")
    parser.add_argument("--poll", type=cli.positive_float, default=None, metavar="SECONDS",
                        help="poll instead of inotify (network filesystems)")
    parser.add_argument("--rescan", type=cli.positive_float, default=5.0, metavar="SECONDS",
                        help="periodic rescan that catches events inotify dropped")
    parser.add_argument("--log-format", choices=logs.FORMATS, default=None)
    return parser.parse_args(argv)


def _check_dirs(args: argparse.Namespace) -> None:
    """Refuse bad directories before TensorFlow loads."""
    if args.export_dir.exists() and not args.export_dir.is_dir():
        raise layout.LayoutError(f"export dir {args.export_dir} is a file, not a directory")
    if args.work_dir.resolve() == args.export_dir.resolve():
        raise layout.LayoutError("work dir must differ from the export dir: the consumer never "
                                 "writes into the producer's directory")
    layout.check_writable_dir(args.work_dir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.log_format)
    stop = cli.stop_on_signals()
    try:
        _check_dirs(args)
    except layout.LayoutError as err:
        cli.fail(PROG, str(err))

    from consumer.loop import Config, Consumer  # TensorFlow loads here

    config = Config(export_dir=args.export_dir, work_dir=args.work_dir, source=args.source,
                    mode=args.mode, train_steps=args.train_steps, until_step=args.until_step,
                    poll=args.poll, rescan=args.rescan)
    consumer = Consumer(config, stop)
    log = logs.get(PROG)
    log.info("consumer_started", export_dir=str(args.export_dir), source=args.source,
             mode=args.mode, until_step=args.until_step)
    stats = consumer.run()
    log.info("consumer_stopped", loaded=len(stats.loaded), failed=len(stats.failed),
             last_step=stats.loaded[-1] if stats.loaded else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
