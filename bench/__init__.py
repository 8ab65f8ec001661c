"""Benchmarks of the handoff and the model server, each beside a baseline measured in the
same run."""

from __future__ import annotations

import contextlib
from typing import Iterator

from harness.processes import ForkServer, Process, env

_warm: dict[str, ForkServer] = {}  # module -> the fork server its processes start from


@contextlib.contextmanager
def warm_starts(modules: tuple[str, ...]) -> Iterator[None]:
    """Within this, ``start`` forks these modules' processes warm, from one server that imported
    them all: a quick run would otherwise spend most of its time importing TensorFlow, about
    5 s a process. A full run starts every process cold, as a user does."""
    server = ForkServer(*modules)
    _warm.update(dict.fromkeys(modules, server))
    try:
        yield
    finally:
        server.close()
        _warm.clear()


def start(module: str, *args) -> Process:
    """A bench process, warm inside ``warm_starts`` for its module, else cold; with the
    environment as it is now either way (a run points the SDKs at its own S3 endpoint)."""
    return Process(module, *args, server=_warm.get(module), environ=env())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    """A duration for the table: 12 ms, 3.4 ms, 56 µs."""
    if seconds >= 0.01:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds * 1000:.1f} ms" if seconds >= 0.001 else f"{seconds * 1e6:.0f} µs"
