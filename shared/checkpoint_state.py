"""The ``checkpoint`` state file's text: TensorFlow's CheckpointState protobuf in text format.

We write it ourselves (``shared.layout`` decides when: it is the checkpoints' commit point) in
the very format TF writes, with paths relative to the file, so ``tf.train.latest_checkpoint``,
``get_checkpoint_state`` and ``checkpoints_iterator`` read it too. Each checkpoint's commit time
goes in TF's own ``all_model_checkpoint_timestamps``.
"""

from __future__ import annotations

import re
from pathlib import Path

_PATH_LINE = re.compile(r'^(model_checkpoint_path|all_model_checkpoint_paths):\s*"([^"]*)"\s*$')
_TIME_LINE = re.compile(r'^all_model_checkpoint_timestamps:\s*([0-9.eE+-]+)\s*$')


def parse(text: str) -> list[tuple[str, float | None]]:
    """(name, commit time) per checkpoint, oldest first, newest last. A time is None where the
    writer recorded none (or not one per checkpoint, which is not ours to trust)."""
    latest, names, times = None, [], []
    for line in text.splitlines():
        if match := _TIME_LINE.match(line.strip()):
            times.append(float(match.group(1)))
        elif match := _PATH_LINE.match(line.strip()):
            name = Path(match.group(2)).name  # TF may write absolute paths; ours are relative
            if match.group(1) == "model_checkpoint_path":
                latest = name
            else:
                names.append(name)
    if len(times) != len(names):
        times = [None] * len(names)
    entries = list(zip(names, times))
    if latest is not None and latest not in names:
        entries.append((latest, None))
    return entries


def render(entries: list[tuple[str, float]]) -> str:
    """The state file for ``entries`` (oldest first); the last one is the latest."""
    lines = [f'model_checkpoint_path: "{entries[-1][0]}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name, _ in entries]
    lines += [f"all_model_checkpoint_timestamps: {at!r}" for _, at in entries]
    return "\n".join(lines) + "\n"
