"""The ``checkpoint`` state file's text: TensorFlow's CheckpointState protobuf in text format.

We write it ourselves (``shared.layout`` decides when: it is the checkpoints' commit point) in
the very format TF writes, with paths relative to the file, so ``tf.train.latest_checkpoint``,
``get_checkpoint_state`` and ``checkpoints_iterator`` read it too. Each checkpoint's commit time
goes in TF's own ``all_model_checkpoint_timestamps``.

A damaged file (a hand edit, another tool) is read two ways. A reader keeps every checkpoint it
can name and takes a time it cannot read as unknown, as TF takes a missing one: the times only
date the commits (the consumer's handoff figure, which then falls back to the file's ctime),
while the checkpoints are whole and committed, and a reader that stopped on them would stop
serving or evaluating for want of a figure. The writer parses strictly (``strict=True``): it
would write the file over, so it refuses it with the first damaged line instead.
"""

from __future__ import annotations

import math
import os
import re

PATH_FIELDS = ("model_checkpoint_path", "all_model_checkpoint_paths")
TIME_FIELD = "all_model_checkpoint_timestamps"
_FIELD = re.compile(r"^(\w+)\s*:\s*(.*?)\s*$")
_QUOTED = re.compile(r'^"([^"]*)"\Z')


class StateError(ValueError):
    """A line of the state file that names one of our fields cannot be read (strict parse)."""


def parse(text: str, *, strict: bool = False) -> list[tuple[str, float | None]]:
    """(name, commit time) per checkpoint, oldest first, newest last. A time is None where the
    writer recorded none, where it cannot be read (unless ``strict``: then StateError names the
    line), or everywhere if there is not one per checkpoint, which is not ours to trust. Fields
    we do not write (TF's ``last_preserved_timestamp``) are skipped."""
    latest, names, times = None, [], []
    for number, line in enumerate(text.splitlines(), start=1):
        field = _FIELD.match(line.strip())
        if field is None or field.group(1) not in (*PATH_FIELDS, TIME_FIELD):
            continue
        key, value = field.groups()
        try:
            if key == TIME_FIELD:
                times.append(_time(value))
                continue
            name = _name(value)
        except StateError as err:
            if strict:
                raise StateError(f"line {number}: {key} {value!r} {err}") from None
            if key == TIME_FIELD:
                times.append(None)  # keeps the others paired with their paths
            continue
        if key == "model_checkpoint_path":
            latest = name
        else:
            names.append(name)
    if len(times) != len(names):
        times = [None] * len(names)
    entries = list(zip(names, times))
    if latest is not None and latest not in names:
        entries.append((latest, None))
    return entries


def _time(value: str) -> float:
    try:
        at = float(value)
    except ValueError:
        raise StateError("is not a number") from None
    if not math.isfinite(at):
        raise StateError("is not a finite number")
    return at


def _name(value: str) -> str:
    quoted = _QUOTED.match(value)
    if quoted is None:
        raise StateError("is not a quoted path")
    return os.path.basename(quoted.group(1))  # TF may write absolute paths; ours are relative


def render(entries: list[tuple[str, float]]) -> str:
    """The state file for ``entries`` (oldest first); the last one is the latest."""
    lines = [f'model_checkpoint_path: "{entries[-1][0]}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name, _ in entries]
    lines += [f"all_model_checkpoint_timestamps: {at!r}" for _, at in entries]
    return "\n".join(lines) + "\n"
