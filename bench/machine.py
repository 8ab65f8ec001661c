"""What machine a bench run ran on, and how fast its basic operations were, for its record."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import threading
import time


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) // 2 ** 20 for line in open("/proc/meminfo")
                  if line.startswith("MemTotal"))
    import importlib.metadata as metadata
    versions = ", ".join(f"{name} {metadata.version(name)}"
                         for name in ("tensorflow-cpu", "watchdog", "structlog"))
    return (f"{os.cpu_count()} cores ({cpu}), {memory} GiB RAM, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, {versions}; "
            f"temp dir {tempfile.gettempdir()}; calibration: {calibration()}")


def calibration() -> str:
    """The machine's basic speeds, best of three, recorded beside each run. Machines of one kind
    differ here by 2.5-3x in everything TensorFlow does (docs/BENCHMARKS.md, "Two machines"); on
    the two recorded so far these three figures did not show it, so they tell a reader what was
    ruled out, and each row's own baseline stays the comparison."""
    import numpy as np

    def best(measure) -> float:
        return min(measure() for _ in range(3))

    def loop() -> float:
        started, total = time.perf_counter(), 0
        for i in range(10_000_000):
            total += i
        return time.perf_counter() - started

    def fresh_memory() -> float:
        started = time.perf_counter()
        np.ones(2 ** 26, np.float32)  # 256 MiB, faulted in page by page
        return time.perf_counter() - started

    def wake() -> float:
        ready, woken, waits = threading.Event(), threading.Event(), []

        def sleeper() -> None:
            for _ in range(50):
                ready.wait()
                ready.clear()
                waits.append(time.perf_counter() - set_at[0])
                woken.set()
        set_at = [0.0]
        thread = threading.Thread(target=sleeper)
        thread.start()
        for _ in range(50):
            time.sleep(0.002)  # long enough for the sleeper's core to go idle
            woken.clear()
            set_at[0] = time.perf_counter()
            ready.set()
            woken.wait()
        thread.join()
        return statistics.median(waits)

    return (f"a 10M-turn Python loop {best(loop):.2f} s, 256 MiB of fresh memory filled "
            f"{best(fresh_memory):.2f} s, a sleeping thread woken {best(wake) * 1e6:.0f} us")
