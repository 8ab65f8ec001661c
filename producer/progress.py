"""One live progress line for a person at a terminal: step of target, steps/s, ETA, the latest
loss and metrics, and the last published versions, e.g.
``1500/3000 ━━━━━     2,345/s 0:00:01 loss 1.592 accuracy 0.2475 → ckpt 1500 sm 1000``.

Events that matter print above the line (start, resume, each SavedModel, errors, the finish);
routine ones (``checkpoint_saved``, ``train_progress``) only move the line. This replaces the
console handler on a TTY and nothing else: JSON output is never touched.
"""

from __future__ import annotations

import atexit
import logging

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeRemainingColumn)
from rich.text import Text

ROUTINE = {"checkpoint_saved", "train_progress"}
_NOT_FIGURES = {"step", "epoch", "event", "level", "timestamp", "logger"}


class StepsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f}/s" if task.speed else "-/s", style="cyan")


class ProgressLine(logging.Handler):
    """A logging handler: it renders records as the console handler did, above a live line."""

    def __init__(self, formatter: logging.Formatter, console: Console | None = None) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.console = console or Console()
        self.progress = Progress(
            MofNCompleteColumn(), BarColumn(bar_width=10), StepsPerSecond(),
            TimeRemainingColumn(), TextColumn("{task.fields[figures]}"),
            TextColumn("{task.fields[published]}", style="green"),
            console=self.console, redirect_stdout=False, redirect_stderr=False)
        self.task = None
        self.published: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = record.msg if isinstance(record.msg, dict) else {}
            name = event.get("event")
            if name not in ROUTINE:
                self.console.print(Text.from_ansi(self.format(record)))  # above the live line
            self._follow(name, event)
        except Exception:  # a display must never take training down
            self.handleError(record)

    def _follow(self, name: str | None, event: dict) -> None:
        if name in ("training_started", "training_resumed"):
            self.task = self.progress.add_task("train", total=event["target_step"],
                                               completed=event["step"], figures="",
                                               published="")
            self.progress.start()
            return
        if self.task is None:
            return
        if isinstance(event.get("step"), int):
            self.progress.update(self.task, completed=event["step"])
        if name == "train_progress":
            figures = "  ".join(f"{key} {value:.4g}" for key, value in event.items()
                                if key not in _NOT_FIGURES and isinstance(value, float))
            self.progress.update(self.task, figures=figures)
        elif name in ("checkpoint_saved", "model_exported"):
            self.published["ckpt" if name == "checkpoint_saved" else "sm"] = event["step"]
            self.progress.update(self.task, published="→ " + " ".join(
                f"{kind} {step}" for kind, step in self.published.items()))
        elif name == "training_finished":
            self.progress.stop()


def install() -> ProgressLine:
    """Swap the root logger's console handler for the progress line, keeping its renderer."""
    root = logging.getLogger()
    [handler] = root.handlers
    line = ProgressLine(handler.formatter)
    root.handlers[:] = [line]
    atexit.register(line.progress.stop)  # however the run ends, the terminal gets its cursor
    return line
