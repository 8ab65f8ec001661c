"""A server's long life (issue 31, item 4): thousands of warm swaps, then hundreds of full loads
of a new graph, in one process, with its RSS sampled throughout.

The child process runs the serve-mode loop's own code for each version (``Consumer._load``:
load, warm-up, gate, the manager's swap, then the old version's unload and the per-pass
collection), the way a server's model thread runs it, on two linear-model SavedModels written
by the producer's publishing code and taken in turn as ever newer versions. Files and the
watcher play no part: what is measured is what each swap leaves behind in memory. The RSS is
read every 1% of the swaps; the slope is a least-squares line through the samples after the
first 500 swaps (TF's and glibc's caches fill in the first ones), per 1,000 swaps.

``python -m bench.longlife``: 10,000 warm swaps and 1,000 full loads (18 ms and 111 ms each on
2 cores shared with other work: 5 min); ``--quick``: 600 and 20, forked warm (20 s).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import start, warm_starts

WARM = ("bench.publisher", "bench.longlife")  # the modules a quick run forks warm
SETTLE = 500  # swaps left out of the slope: the caches fill in these


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def live_through(export_dir: Path, work_dir: Path, swaps: int, warm: bool, every: int,
                 first_step: int) -> None:
    """``swaps`` loads through the serve loop's own code, printing an ``rss`` event every
    ``every``; warm swaps into the live graph, or (``warm`` False) full loads of a new graph."""
    from consumer import loader
    from consumer.loop import Config, Consumer
    from shared import layout

    exports = layout.savedmodel_versions(export_dir)
    config = Config(export_dir=export_dir, work_dir=work_dir, source="savedmodel",
                    mode=loader.SERVE, warm_swap=warm)
    consumer = Consumer(config, threading.Event())
    try:
        started = time.perf_counter()
        for i in range(swaps):
            step = first_step + i
            exported = exports[i % len(exports)]
            version = dataclasses.replace(exported, step=step)  # taken as ever newer versions
            previous = consumer.live
            assert consumer._load(version), f"version {step} was refused"
            if previous is not None:
                consumer._unload(previous.version.step, "superseded")
            gc.collect()  # as the loop does after each pass
            if i % every == 0 or i == swaps - 1:
                print(json.dumps({"event": "rss", "warm": warm, "swaps": i + 1,
                                  "rss_mib": _rss_mib(),
                                  "seconds": time.perf_counter() - started}), flush=True)
    finally:
        consumer.close_versions()
        consumer.source.close()


def slope_per_1000(samples: list[dict]) -> float:
    """MiB per 1,000 swaps: least squares through the samples after the first ``SETTLE``."""
    points = [(s["swaps"], s["rss_mib"]) for s in samples if s["swaps"] > SETTLE] or \
        [(s["swaps"], s["rss_mib"]) for s in samples]
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return 1000 * sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


def longlife_run(warm_swaps: int, full_loads: int, tmp: Path) -> dict:
    root = tmp / "longlife" / "exports"
    seed = start("bench.publisher", "--export-dir", root, "--versions", 2, "--interval", 0,
                 "--model", "linear", "--kind", "savedmodel")
    assert seed.wait(timeout=120) == 0, seed.stderr
    child = start("bench.longlife", "child", "--export-dir", root, "--work-dir",
                  tmp / "longlife" / "work", "--warm", warm_swaps, "--full", full_loads)
    assert child.wait(timeout=900) == 0, child.stderr
    samples = child.named("rss")
    warm = [s for s in samples if s["warm"]]
    full = [s for s in samples if not s["warm"]]
    loads = child.named("model_loaded")
    return {"warm_swaps": warm_swaps, "full_loads": full_loads,
            "warm_slope": slope_per_1000(warm), "full_slope": slope_per_1000(full),
            "warm_first": warm[0]["rss_mib"], "warm_last": warm[-1]["rss_mib"],
            "full_first": full[0]["rss_mib"] if full else None,
            "full_last": full[-1]["rss_mib"] if full else None,
            "warm_seconds": warm[-1]["seconds"], "full_seconds": full[-1]["seconds"] if full
            else None, "kinds": sorted({e["load"] for e in loads}),
            "warm_samples": [(s["swaps"], round(s["rss_mib"], 1)) for s in warm],
            "full_samples": [(s["swaps"], round(s["rss_mib"], 1)) for s in full]}


def longlife_rows(run: dict) -> list[tuple]:
    warm, full = run["warm_swaps"], run["full_loads"]
    return [
        (f"Long life: {warm:,} warm swaps in one server process",
         f"RSS {run['warm_first']:.0f} MiB after the first, {run['warm_last']:.0f} MiB after "
         f"{warm:,}; {run['warm_seconds'] / warm * 1000:.1f} ms a swap",
         f"slope {run['warm_slope']:+.2f} MiB per 1,000 swaps after the first {SETTLE}",
         "< 1 MB per 1,000",  # judged only over enough swaps past the settling ones
         run["warm_slope"] < 1.0 if warm >= 4 * SETTLE else None),
        (f"Long life: {full:,} full loads of a new graph, the same process",
         f"RSS {run['full_first']:.0f} MiB after the first, {run['full_last']:.0f} MiB after "
         f"{full:,}; {run['full_seconds'] / full * 1000:.0f} ms a load",
         f"slope {run['full_slope']:+.2f} MiB per 1,000 loads after the first {SETTLE}"
         if full > SETTLE else f"slope {run['full_slope']:+.2f} MiB per 1,000 loads",
         "report", None),
    ]


def _child(argv: list[str]) -> None:
    from consumer import hugepages
    from shared import logs

    hugepages.reexec_with_huge_pages(None)  # the allocator the server runs with
    parser = argparse.ArgumentParser(prog="bench.longlife child")
    parser.add_argument("--export-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--warm", type=int, required=True)
    parser.add_argument("--full", type=int, required=True)
    args = parser.parse_args(argv)
    logs.configure("json")
    import consumer.loop  # noqa: F401  TensorFlow and the loop, before the freeze
    gc.freeze()  # as the loop's run() does: what lives now lives as long as the process
    live_through(args.export_dir, args.work_dir, args.warm, True,
                 max(1, args.warm // 100), 1)
    if args.full:
        live_through(args.export_dir, args.work_dir, args.full, False,
                     max(1, args.full // 100), args.warm + 1)


def main() -> None:
    if sys.argv[1:2] == ["child"]:
        _child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--warm", type=int)
    parser.add_argument("--full", type=int)
    parser.add_argument("--json", action="store_true", help="print the raw figures too")
    args = parser.parse_args()
    warm = args.warm or (600 if args.quick else 10_000)
    full = args.full if args.full is not None else (20 if args.quick else 1000)
    # quick: its processes forked warm, a smoke test (as ``make bench --quick`` does)
    forked = warm_starts(WARM) if args.quick else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="bench-longlife-") as tmp, forked:
        run = longlife_run(warm, full, Path(tmp))
    if args.json:
        print(json.dumps(run))
    for row in longlife_rows(run):
        print(" | ".join("" if c is None else str(c) for c in row))


if __name__ == "__main__":
    main()
