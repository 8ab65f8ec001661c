"""Structured logs for both processes: a console renderer on a TTY, JSON lines otherwise.

Configure once, first thing in ``main``. Every event is a snake_case fact with its figures as
fields, plus ``timestamp`` (ISO 8601, UTC) and ``level``. TensorFlow's and absl's stdlib
logging goes through the same renderer, so a JSON consumer never meets a stray text line.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

FORMATS = ("console", "json")


def configure(fmt: str | None = None, stream: TextIO | None = None) -> str:
    """Send all logs to ``stream`` (stdout) as ``fmt``; None picks console on a TTY, else JSON.
    Returns the format chosen."""
    stream = stream or sys.stdout
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    renderer = (structlog.dev.ConsoleRenderer() if fmt == "console"
                else structlog.processors.JSONRenderer())
    stamped = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*stamped, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*stamped, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *([structlog.processors.format_exc_info] if fmt == "json" else []), renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in ("tensorflow", "absl"):
        # TensorFlow adds its own stderr handler when it finds none; ours should be the only one.
        # Its warnings are v1 deprecation notices for the very APIs this project is about.
        foreign = logging.getLogger(name)
        foreign.handlers[:] = []
        foreign.propagate = True
        foreign.setLevel(logging.ERROR)
    return fmt


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
