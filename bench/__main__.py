"""``make bench``: the handoff's and the server's figures, each beside a baseline measured in
the same run.

Producers, consumers and servers run as separate processes, as in production. The results are
printed as one table, and a full run writes them into docs/BENCHMARKS.md between its markers.
``--quick`` runs everything small (a couple of minutes, its processes forked warm) and writes
nothing unless ``--record``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from bench import (bigswap, grpc_load, handoff, longlife, objstore, objstore_fleet, oip,
                   rollback, serving, throughput, warm_starts, wrk)
from bench.cluster import cluster_rows, cluster_run
from bench.machine import machine
from harness.processes import REPO

DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
T = TypeVar("T")
WARM = ("consumer", "consumer.model_server", "bench.publisher", "producer", "bench.client",
        "bench.inprocess", "bench.widemodel", "bench.bigmodel", "bench.hello", "bench.baseline",
        "bench.bigswap", "bench.longlife")


def run_all(sizes: handoff.Sizes, tmp: Path) -> tuple[list[tuple], list[str]]:
    """Every run, in order; the table's rows and the notes under it."""
    runs = {name: timed(f"handoff {name}", handoff.handoff_run, name, 1, sizes, tmp, **options)
            for name, options in (
                ("checkpoints", {}), ("savedmodels", {"kind": "savedmodel"}),
                ("full", {"extra": ("--full-loads",)}), ("poll", {"extra": ("--poll", "1")}),
                ("baseline", {"baseline": True}))}
    runs["scale4"] = timed("handoff scale4", handoff.handoff_run, "scale4", 4, sizes, tmp)
    memory = timed("memory", handoff.memory_run, sizes, tmp)
    big = timed("big model", handoff.bigmodel_run, sizes)
    serve = timed("serving", serving.serving_run, sizes.serve_versions, 0.1, tmp)
    mlp = timed("throughput", throughput.mlp_run, sizes.seconds, tmp)
    batching = timed("batching", throughput.batching_run, sizes.seconds, tmp)
    moved = timed("rollback", rollback.rollback_run, sizes.moves, 0.25, tmp)
    cluster = timed("cluster", cluster_run, sizes.cluster_steps, tmp)
    grpc_vs_rest = timed("grpc load", grpc_load.grpc_load_run, sizes.seconds, tmp)
    oip_run = timed("open inference protocol", oip.oip_run, sizes.seconds, tmp)
    big_swap = timed("big swaps", bigswap.bigswap_run, *sizes.big_swap, tmp)
    long_life = timed("long life", longlife.longlife_run, *sizes.long_life, tmp)
    store = timed("object store", objstore.objstore_run, sizes.store_mib)
    fleet = timed("fleet", objstore_fleet.fleet_run, sizes.fleet_versions, tmp)
    rows = [*handoff.handoff_rows(*(runs[n] for n in ("checkpoints", "savedmodels", "full",
                                                      "poll", "baseline", "scale4")), memory, big),
            *serving.serving_rows(serve), *throughput.mlp_rows(mlp),
            *throughput.batching_rows(batching), rollback.rollback_row(moved),
            *cluster_rows(cluster), *grpc_load.grpc_load_rows(grpc_vs_rest),
            *oip.oip_rows(oip_run), *bigswap.bigswap_rows(big_swap),
            *longlife.longlife_rows(long_life), *objstore.objstore_rows(store),
            *objstore_fleet.fleet_rows(fleet)]
    notes = [*handoff.handoff_notes(runs["checkpoints"], runs["savedmodels"], runs["full"], big),
             serving.swap_profile(serve), *throughput.profiles(mlp), f"Sizes: {sizes}."]
    return rows, notes


def timed(name: str, run: Callable[..., T], *args, **kwargs) -> T:
    """One run, with a line on stderr when it ends: a full bench takes minutes."""
    started = time.monotonic()
    result = run(*args, **kwargs)
    sys.stderr.write(f"bench: {name} took {time.monotonic() - started:.1f} s\n")
    return result


def render(rows: list[tuple]) -> str:
    lines = ["| benchmark | figure | against the baseline | target | met |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {figure} | {ratio} | {target} | "
              f"{'' if met is None else ('yes' if met else '**no**')} |"
              for name, figure, ratio, target, met in rows]
    return "\n".join(lines)


def record(text: str) -> None:
    doc = DOC.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    DOC.write_text(re.sub(f"{BEGIN}.*?{END}", lambda _: block, doc, flags=re.S))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="everything small, in a couple of "
                        "minutes")
    parser.add_argument("--record", action="store_true", help="write docs/BENCHMARKS.md "
                        "(the default for a full run)")
    args = parser.parse_args()
    if not wrk.available():
        sys.stderr.write("bench: error: wrk is missing: `make tools` installs it\n")
        return 2
    if not grpc_load.available():
        sys.stderr.write("bench: error: h2load is missing: `make tools` installs it "
                         "(Debian's nghttp2-client)\n")
        return 2
    sizes = handoff.QUICK if args.quick else handoff.FULL
    started = time.monotonic()
    warm = warm_starts(WARM) if args.quick else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="tf-handoff-bench-") as tmp, warm:
        rows, notes = run_all(sizes, Path(tmp))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = (f"Run of {when}, {'quick' if args.quick else 'full'}, "
            f"{time.monotonic() - started:.0f} s.\nMachine: {machine()}.\n\n{render(rows)}\n\n"
            + "\n".join(f"- {note}" for note in notes))
    print(text)
    if args.record or not args.quick:
        record(text)
        print(f"\nrecorded in {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
