"""``python -m producer``: train a seed model and publish versions into an export dir."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from producer import cluster
from shared import checkpoint_state, cli, commit, dirlock, layout, logs

PROG = "producer"
MODEL_NAMES = ("linear", "mlp")  # shared.models.MODELS, named here to check before TF loads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--model", choices=MODEL_NAMES, default="linear")
    parser.add_argument("--export-dir", default="exports",
                        help="a local directory, or s3://bucket/prefix or gs://bucket/prefix: "
                             "each version is committed in --staging-dir first, then uploaded "
                             "(its manifest last). In a cluster, a relative path is made "
                             "absolute against this process's working directory: the ps tasks "
                             "write each checkpoint's variables to the path the chief names")
    parser.add_argument("--staging-dir", type=Path, default=None, metavar="DIR",
                        help="with a bucket --export-dir: the local export dir versions are "
                             "committed in before their upload, and checkpoints kept in "
                             "(default: work/staging/<scheme>/<bucket>/<prefix>)")
    parser.add_argument("--upload-timeout", type=cli.positive_float, default=60.0,
                        metavar="SECONDS", help="with a bucket --export-dir: how long the "
                        "final upload may take before the producer exits 1")
    parser.add_argument("--steps", type=cli.non_negative_int, default=None,
                        help="train until the global step reaches N (default: the model's own)")
    parser.add_argument("--checkpoint-every", type=cli.positive_int, default=100, metavar="N")
    parser.add_argument("--export-every", type=cli.positive_int, default=500, metavar="N")
    parser.add_argument("--keep-checkpoints", type=cli.non_negative_int, default=5, metavar="N",
                        help="checkpoints the state file keeps, oldest deleted after each "
                             "commit; 0 keeps all (our retention: the Saver's max_to_keep is "
                             "not used, TF applies it only when the Saver writes the state)")
    parser.add_argument("--keep-checkpoint-every-hours", type=cli.positive_float, default=None,
                        metavar="H", help="also keep one retired checkpoint every H hours, "
                                          "outside the state file")
    parser.add_argument("--keep-exports", type=cli.non_negative_int, default=5, metavar="N",
                        help="SavedModels to keep; 0 keeps all")
    parser.add_argument("--max-publish-failures", type=cli.positive_int, default=3, metavar="N",
                        help="a failed publish (a full disk) is retried at the next interval "
                             "while training goes on; exit 1 after N in a row")
    parser.add_argument("--seed", type=cli.non_negative_int, default=0)
    parser.add_argument("--log-every", type=cli.positive_int, default=None, metavar="EPOCHS")
    parser.add_argument("--log-format", choices=logs.FORMATS, default=None)
    tasks = parser.add_argument_group(
        "cluster training (TensorFlow's ps/worker runtime; without these flags, TF_CONFIG)")
    tasks.add_argument("--cluster", default=None, metavar="JSON|FILE",
                       help='{"ps": ["host:port"], "worker": ["host:port", ...]}, or a file')
    tasks.add_argument("--job", choices=cluster.JOBS, default=None,
                       help="this task's job; worker 0 is the chief, which alone publishes")
    tasks.add_argument("--task", type=cli.non_negative_int, default=None, metavar="N")
    tasks.add_argument("--cluster-timeout", type=cli.positive_float, default=60.0,
                       metavar="SECONDS", help="how long a worker waits for the ps tasks and "
                                               "the chief, and for any one step")
    return parser.parse_args(argv)


def check_state_file(root: Path) -> None:
    """Raise LayoutError if the checkpoint state file cannot be read whole. The producer would
    write it over at its next commit, losing what a person may want to see first; a reader
    parses it leniently (``shared.checkpoint_state``)."""
    path = layout.state_file(root)
    try:
        checkpoint_state.parse(path.read_text(), strict=True)
    except (FileNotFoundError, NotADirectoryError):  # none yet, or no export dir: claim says
        return
    except checkpoint_state.StateError as err:
        raise layout.LayoutError(f"checkpoint state file {path} is damaged: {err}; repair or "
                                 "remove that line (the checkpoints are untouched)") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or err
        raise layout.LayoutError(f"checkpoint state file {path} cannot be read: {reason}") from None


def resolve_export_dir(args: argparse.Namespace) -> str | None:
    """Split ``--export-dir`` into the local export dir (``args.export_dir``, a Path) and the
    bucket URL it is uploaded to (returned; None for a local export dir)."""
    from shared import store

    text = str(args.export_dir)
    if store.is_remote(text):
        from producer import upload

        args.export_dir = args.staging_dir or upload.staging_dir_for(text)
        return text.rstrip("/")
    if "://" in text:
        cli.fail(PROG, f"--export-dir {text}: only s3:// and gs:// buckets or a local path")
    args.export_dir = Path(text)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    remote_url = resolve_export_dir(args)
    if logs.configure(args.log_format) == "console" and sys.stdout.isatty():
        from producer import progress

        progress.install()  # one live line for a person; JSON stays event for event
    stop = cli.stop_on_signals()

    try:
        role = cluster.resolve(args.cluster, args.job, args.task)
        if role is not None:  # relative, the ps would resolve it against its own cwd
            args.export_dir = Path(os.path.abspath(args.export_dir))
        if role is None or role.is_chief:  # the one process that writes the export dir
            check_state_file(args.export_dir)  # first: claim reads it too, leniently
            commit.claim(args.export_dir, args.model)  # before TensorFlow: bad input fails fast
            dirlock.hold(args.export_dir, PROG)
            if remote_url:
                from producer import upload

                upload.check_bucket(remote_url, args.model)
    except (cluster.ClusterError, layout.LayoutError, dirlock.DirLocked) as err:
        cli.fail(PROG, str(err))

    from producer import train
    from shared import models

    spec = models.MODELS[args.model]
    config = train.Config(
        model=args.model, export_dir=args.export_dir,
        steps=spec.default_steps if args.steps is None else args.steps,
        checkpoint_every=args.checkpoint_every, export_every=args.export_every,
        keep_checkpoints=args.keep_checkpoints,
        keep_checkpoint_every_hours=args.keep_checkpoint_every_hours,
        keep_exports=args.keep_exports, seed=args.seed,
        log_every_epochs=args.log_every or spec.log_every_epochs,
        max_publish_failures=args.max_publish_failures, remote=remote_url,
        upload_timeout=args.upload_timeout)
    try:
        if role is None:
            train.run(config, stop)
            return 0
        from producer import distributed

        if role.job == "ps":
            distributed.serve_ps(role, stop)
        else:
            distributed.train_worker(role, config, stop, args.cluster_timeout)
    except train.PublishGaveUp as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 1
    except cluster.ClusterFailure as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        # A session bound to a dead task blocks forever in its close at interpreter exit.
        # Every version is committed durably already; nothing is left to flush: leave now.
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
