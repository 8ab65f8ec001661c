"""Transparent huge pages for large allocations, so a restore's fresh tensors fault in 2 MiB at a
time instead of 4 KiB: restoring 1 GiB from the page cache went from 0.93 s to 0.67 s here, and
as four variables from 0.54 s to 0.34 s (docs/BENCHMARKS.md).

glibc reads ``GLIBC_TUNABLES`` only when a process starts, so a consumer started as ``python -m
...`` executes itself again, once, first thing, with the tunable added. Never otherwise:

- not for a script that calls ``main([...])`` itself: executing it again would run the script
  from its top a second time;
- not when ``GLIBC_TUNABLES`` already says anything about ``glibc.malloc.hugetlb`` (a user's
  ``=0`` is a choice), nor with ``TF_HANDOFF_NO_HUGE_PAGES`` set, nor off Linux.

A stop signal sent during the exec is not lost: the stop signals are blocked across it, stay
pending, and reach the new process once it has installed its handlers (``unblock_signals``).
"""

from __future__ import annotations

import os
import signal
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "TF_HANDOFF_NO_HUGE_PAGES"  # set to anything to keep the small pages
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def wanted(argv: list[str] | None) -> bool:
    """Whether this process should execute itself again for huge pages."""
    current = os.environ.get("GLIBC_TUNABLES", "")
    return (sys.platform == "linux" and argv is None and sys.orig_argv[1:2] == ["-m"]
            and "glibc.malloc.hugetlb=" not in current and not os.environ.get(OPT_OUT))


def reexec_with_huge_pages(argv: list[str] | None) -> None:
    """Execute ``python -m ...`` again with the tunable, if ``wanted``; call it first in main,
    with main's own ``argv`` (None: the command line's)."""
    if not wanted(argv):
        return
    current = os.environ.get("GLIBC_TUNABLES", "")
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, [current, TUNABLE]))}
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # no huge pages then: the process goes on as it is
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def unblock_signals() -> None:
    """After the stop handlers are installed: a signal that came during the exec arrives now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
