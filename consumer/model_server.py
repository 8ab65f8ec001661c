"""``python -m consumer.model_server``: a drop-in for ``tensorflow_model_server``, under its flags.

    tensorflow_model_server --rest_api_port=8501 --model_name=m --model_base_path=/models/m
    python -m consumer.model_server --rest_api_port=8501 --model_name=m --model_base_path=/models/m
"""

from __future__ import annotations

import sys

from shared import cli, logs

PROG = "model_server"


def main(argv: list[str] | None = None) -> int:
    from consumer import hugepages
    from consumer.serving import flags

    hugepages.reexec_with_huge_pages(argv)  # first: before TensorFlow and any allocation
    args = flags.parse(argv)
    if args.version:
        print("tf-handoff model server, TF Serving's API 2.21")
        return 0
    logs.configure(args.log_format)
    stop = cli.stop_on_signals()
    hugepages.unblock_signals()  # a stop signal sent during the re-exec is handled now
    if args.model_base_path is not None and args.model_config_file is None and \
            not args.model_base_path.is_absolute():
        args.model_base_path = args.model_base_path.absolute()
    from consumer.serving import setup  # TensorFlow loads here

    server = setup.build(args, PROG)
    log = logs.get("consumer")
    if flags.ignored(args):
        log.warning("flags_ignored", flags=flags.ignored(args),
                    reason="TF Serving flags this server accepts and does not act on")
    stats = server.run(stop)
    log.info("consumer_stopped", loaded=len(stats.loaded), failed=len(stats.failed),
             last_step=stats.loaded[-1] if stats.loaded else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
