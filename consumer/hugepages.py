"""Transparent huge pages for large allocations, so a restore's fresh tensors fault in 2 MiB at a
time instead of 4 KiB: restoring 1 GiB from the page cache went from 0.93 s to 0.67 s here, and
as four variables from 0.54 s to 0.34 s (docs/BENCHMARKS.md).

glibc reads ``GLIBC_TUNABLES`` only when a process starts, so a process that wants it executes
itself again, once, with the tunable added. Another libc ignores the variable, and the
re-executed process finds it set, so this never loops.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "TF_HANDOFF_NO_HUGE_PAGES"  # set to anything to keep the small pages


def reexec_with_huge_pages() -> None:
    """Re-execute this process with the tunable set, unless it is set, opted out, or not Linux."""
    current = os.environ.get("GLIBC_TUNABLES", "")
    if sys.platform != "linux" or TUNABLE in current.split(":") or os.environ.get(OPT_OUT):
        return
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, [current, TUNABLE]))}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
