"""A live progress display for a person at a terminal: step of target, a bar, steps/s, ETA, the
latest loss and metrics, and the last published versions, e.g.
``1500/3000 ━━━━━     2,345/s 0:00:01 loss 1.592  accuracy 0.2475 → ckpt 1500 sm 1000``.

Every field stays whole at any width: one line when it fits, the bar shrinking first; else the
figures move to a second line (and wrap, whole, onto more), so at 80 columns the linear model
shows ``2000/2000 ━━━━━━━━━━ 1,340/s 0:00:00 → ckpt 2000 sm 2000`` over ``  loss 0.00235  slope
1.5  intercept -3``. Rich's own table of columns cut each field short instead (``200… ━━━━
1,34… 0:0… loss 0.00235 slope…``).

Events that matter print above the display (start, resume, each SavedModel, errors, the finish);
routine ones (``checkpoint_saved``, ``train_progress``) only move it. This replaces the console
handler on a TTY and nothing else: JSON output is never touched.
"""

from __future__ import annotations

import atexit
import logging
from typing import Callable, Iterable

from rich.console import Console, ConsoleOptions, RenderResult
from rich.progress import MofNCompleteColumn, Progress, Task, TimeRemainingColumn
from rich.progress_bar import ProgressBar
from rich.text import Text

ROUTINE = {"checkpoint_saved", "train_progress"}
_NOT_FIGURES = {"step", "epoch", "event", "level", "timestamp", "logger"}
BAR_WIDTH = 10  # at most
MIN_BAR = 4  # narrower than this, the bar says nothing: it goes before any field does
INDENT = "  "  # the figures' lines, under the first


class Layout:
    """One task's display, laid out for the width it is given when it renders."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        def bar(width: int) -> Text:  # rich's own bar, as text, to sit among the fields
            drawn = ProgressBar(total=self.task.total, completed=self.task.completed, width=width)
            segments = console.render(drawn, options.update(width=width))
            return Text.assemble(*((s.text, s.style) for s in segments if s.text != "\n"))

        yield from lay_out(self.fields(), options.max_width, bar)

    def fields(self) -> tuple[list[Text], list[Text], Text | None]:
        """The fields around the bar (the count, then steps/s and the ETA), the figures, and
        the published versions (None before the first)."""
        task = self.task
        rate = Text(f"{task.speed:,.0f}/s" if task.speed else "-/s", style="cyan")
        head = [MofNCompleteColumn().render(task), rate, TimeRemainingColumn().render(task)]
        figures = [Text(figure) for figure in task.fields["figures"]]
        published = task.fields["published"]
        return head, figures, Text(published, style="green") if published else None


def lay_out(fields: tuple[list[Text], list[Text], Text | None], width: int,
            bar: Callable[[int], Text]) -> Iterable[Text]:
    """The display's lines, none wider than ``width`` while each field fits in it: one line if
    the bar keeps ``MIN_BAR`` cells; else the figures go below, then the versions, then the bar
    goes."""
    (count, *timing), figures, published = fields
    versions = [published] if published else []
    rest = [*timing, *([_line(figures, gap=2)] if figures else []), *versions]
    if (room := _room(width, [count, *rest])) >= MIN_BAR:
        yield _line([count, bar(min(room, BAR_WIDTH)), *rest])
        return
    first, below = [*timing, *versions], []
    if _room(width, [count, *first]) < MIN_BAR:
        first, below = timing, versions
    room = _room(width, [count, *first])
    yield _line([count, *([bar(min(room, BAR_WIDTH))] if room >= MIN_BAR else []), *first])
    yield from _wrap(below, width)
    yield from _wrap(figures, width)


def _wrap(fields: list[Text], width: int) -> Iterable[Text]:
    """``fields`` on indented lines, as many on each as fit, none broken."""
    line: list[Text] = []
    for field in fields:
        if line and len(INDENT) + _width([*line, field], gap=2) > width:
            yield _line(line, gap=2, indent=INDENT)
            line = []
        line.append(field)
    if line:
        yield _line(line, gap=2, indent=INDENT)


def _width(fields: list[Text], gap: int = 1) -> int:
    return sum(field.cell_len for field in fields) + gap * (len(fields) - 1)


def _room(width: int, fields: list[Text]) -> int:
    """The cells left for the bar on a line of ``fields``, after its space."""
    return width - _width(fields) - 1


def _line(fields: list[Text], gap: int = 1, indent: str = "") -> Text:
    line = Text(indent) + Text(" " * gap).join(fields)
    line.no_wrap, line.overflow = True, "fold"  # a field wider than the terminal folds, whole
    return line


class LiveProgress(Progress):
    """rich's Progress, its speed and ETA kept, each task shown by ``Layout``."""

    def get_renderables(self) -> Iterable[Layout]:
        return [Layout(task) for task in self.tasks]


class ProgressLine(logging.Handler):
    """A logging handler: it renders records as the console handler did, above a live display."""

    def __init__(self, formatter: logging.Formatter, console: Console | None = None) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.console = console or Console()
        self.progress = LiveProgress(console=self.console, redirect_stdout=False,
                                     redirect_stderr=False)
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
                                               completed=event["step"], figures=[],
                                               published="")
            self.progress.start()
            return
        if self.task is None:
            return
        if isinstance(event.get("step"), int):
            self.progress.update(self.task, completed=event["step"])
        if name == "train_progress":
            figures = [f"{key} {value:.4g}" for key, value in event.items()
                       if key not in _NOT_FIGURES and isinstance(value, float)]
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
