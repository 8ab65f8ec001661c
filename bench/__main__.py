"""``make bench``: the handoff's figures, each beside a baseline measured in the same run.

Producers and consumers run as separate processes, as in production. The results are printed
as one table, and a full run writes them into docs/BENCHMARKS.md between its markers.
``--quick`` runs everything small (about a minute, its processes forked warm) and writes
nothing unless ``--record``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import percentile, start, warm_starts
from bench.cluster import cluster_run
from bench.machine import machine
from bench.serving import serving_run
from harness.processes import REPO, command, env, event_time

DOC = REPO / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


@dataclass(frozen=True)
class Sizes:
    versions: int  # per latency run
    interval: float  # seconds between versions
    reloads: int  # memory run
    reload_interval: float
    restore_mib: int
    stall_mib: int
    stall_steps: int
    stall_every: int
    serve_versions: int  # per serving run, one every 100 ms
    cluster_steps: int  # per cluster run


FULL = Sizes(versions=60, interval=0.25, reloads=500, reload_interval=0.08, restore_mib=1024,
             stall_mib=256, stall_steps=400, stall_every=100, serve_versions=100,
             cluster_steps=6000)
QUICK = Sizes(versions=10, interval=0.15, reloads=40, reload_interval=0.05, restore_mib=32,
              stall_mib=16, stall_steps=100, stall_every=50, serve_versions=15,
              cluster_steps=400)


def handoff_run(name: str, consumers: int, sizes: Sizes, tmp: Path, *, baseline: bool = False,
                kind: str = "checkpoint", extra: tuple = (), versions: int | None = None,
                interval: float | None = None) -> dict:
    """Publish versions of ``kind`` at a steady pace; for each published version, the latency is
    its commit (as the writer recorded it) until the watcher has it or a newer one ready.
    ``extra`` are consumer options."""
    root = tmp / name / "exports"
    root.mkdir(parents=True)
    watchers = [start("bench.baseline", "--export-dir", root) if baseline
                else start("consumer", "--export-dir", root, "--work-dir", tmp / name / f"work{i}",
                           "--source", kind, *extra) for i in range(consumers)]
    try:
        for watcher in watchers:
            watcher.wait_for(lambda e: e["event"] == "watching")
        publisher = start("bench.publisher", "--export-dir", root, "--versions",
                          versions or sizes.versions, "--interval", interval or sizes.interval,
                          "--kind", kind)
        assert publisher.wait(timeout=600) == 0, publisher.stderr
        last = publisher.named("committed")[-1]["step"]
        for watcher in watchers:  # every watcher takes the last version, pollers within ~1 s
            watcher.wait_for(lambda e: e["event"] == "model_loaded" and e["step"] == last,
                             timeout=15)
    finally:
        for watcher in watchers:
            watcher.terminate()
    commits = publisher.named("committed")
    latencies, recorded, loads = [], [], []
    for watcher in watchers:
        loaded = [(e["step"], e.get("ready_at") or event_time(e))
                  for e in watcher.named("model_loaded")]
        loads += watcher.named("model_loaded")
        # Per published version: commit until this version *or a newer one* is ready. A
        # poller that skips versions is charged for the wait, not excused from it. The commit
        # is the rename that made it visible; the time the writer recorded comes before the
        # fsync of its own record, about 1 ms earlier here, and is reported beside it.
        for commit in commits:
            ready = min(at for step, at in loaded if step >= commit["step"])
            latencies.append(ready - commit["visible_at"])
            recorded.append(ready - commit["committed_at"])
    return {"name": name, "published": len(commits), "loaded": len(loads),
            "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
            "max": max(latencies), "recorded_p50": percentile(recorded, 0.5),
            "recorded_p95": percentile(recorded, 0.95), "events": loads}


def memory_run(sizes: Sizes, tmp: Path) -> dict:
    run = handoff_run("memory", 1, sizes, tmp, versions=sizes.reloads,
                      interval=sizes.reload_interval)
    rss = [e["rss_mb"] for e in run["events"]]
    early = rss[min(19, len(rss) - 1)]
    return {"loads": len(rss), "rss_at_20": early, "rss_at_end": rss[-1],
            "growth_mb": rss[-1] - early}


def bigmodel_run(sizes: Sizes) -> dict:
    result = subprocess.run(
        command("bench.bigmodel", "--restore-mib", sizes.restore_mib, "--stall-mib",
                sizes.stall_mib, "--stall-steps", sizes.stall_steps, "--stall-every",
                sizes.stall_every), cwd=REPO, capture_output=True, text=True, env=env(),
        timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return {line["bench"]: line for line in map(json.loads, result.stdout.splitlines())}


def phases(run: dict, load: str) -> dict:
    """Median seconds per phase of the consumer's ``load`` (warm or full) loads, and the rest
    of the handoff: noticing the commit, and listing the directory."""
    events = [e for e in run["events"] if e.get("load") == load]
    names = dict.fromkeys(name for e in events for name in e["phases"])
    split = {name: statistics.median(e["phases"][name] for e in events) for name in names}
    split["notice"] = statistics.median(e["handoff_seconds"] - e["load_seconds"] for e in events)
    return split


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def table(native, savedmodels, full, poll, baseline, scaled, memory, big, serve, cluster,
          sizes: Sizes) -> tuple[str, list[str]]:
    def latency(run):
        return f"p50 {ms(run['p50'])}, p95 {ms(run['p95'])}, max {ms(run['max'])} " \
               f"over {run['published']} versions ({run['loaded']} loads)"

    def warm(run):
        ahead = baseline["p50"] / run["p50"]
        return (f"{ahead:.0f}x faster than TF's iterator (p50)", "p50 <= 3 ms, p95 <= 6 ms, >= 200x",
                run["p50"] <= 0.003 and run["p95"] <= 0.006 and ahead >= 200)

    restore, stall = big["restore1"], big["stall"]
    rows = [
        ("Handoff, warm swap, checkpoints (inotify)", latency(native), *warm(native)),
        ("Handoff, warm swap, SavedModels (inotify)", latency(savedmodels), *warm(savedmodels)),
        ("Handoff, full load, checkpoints (--full-loads)", latency(full),
         f"{baseline['p50'] / full['p50']:.0f}x faster than TF's iterator (p50)",
         "p50 < 50 ms, >= 10x", full["p50"] < 0.05 and baseline["p50"] / full["p50"] >= 10),
        ("Handoff, this consumer --poll 1", latency(poll),
         f"{baseline['p50'] / poll['p50']:.1f}x vs TF's iterator (p50)", "", None),
        ("Handoff, TF checkpoints_iterator", latency(baseline), "baseline", "", None),
        ("Handoff, 4 consumers on one dir", latency(scaled),
         f"{scaled['p50'] / native['p50']:.1f}x the 1-consumer p50", "", None),
        (f"Memory over {memory['loads']} reloads",
         f"RSS {memory['rss_at_20']:.0f} MB after 20, {memory['rss_at_end']:.0f} MB after "
         f"{memory['loads']}: {memory['growth_mb']:+.1f} MB",
         f"{memory['rss_at_end'] / memory['rss_at_20']:.3f}x RSS after 20",
         "< 20 MB growth", memory["growth_mb"] < 20),
        *(restore_row(run) for run in (big["restore1"], big["restore4"])),
        (f"Checkpoint stall, {stall['mib']:.0f} MiB every {stall['every']} steps",
         f"{stall['stall_s']:.2f} s a checkpoint, {stall['save_mib_per_s']:.0f} MiB/s; "
         f"{stall['steps_per_s_checkpointing']:.0f} vs {stall['steps_per_s_plain']:.0f} steps/s",
         f"{stall['save_s'] / stall['vanilla_save_s']:.2f}x vanilla Saver.save "
         f"({stall['vanilla_save_s']:.2f} s)", "report", None),
        *serving_rows(serve),
        *cluster_rows(cluster),
    ]
    lines = ["| benchmark | figure | against the baseline | target | met |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | {figure} | {ratio} | {target} | "
              f"{'' if met is None else ('yes' if met else '**no**')} |"
              for name, figure, ratio, target, met in rows]
    notes = [f"Where a {load} handoff's time goes (medians, {run['name']}): "
             + ", ".join(f"{name} {ms(seconds)}" for name, seconds in phases(run, load).items())
             + "." for run, load in ((native, "warm"), (savedmodels, "warm"), (full, "full"))]
    notes += [
             f"Restore split, one variable: TF's RestoreV2 alone (read + crc32c) "
             f"{restore['tf_read_s']:.2f} s, restore with assign {restore['restore_s']:.2f} s, "
             f"whole load {restore['load_s']:.2f} s.",
             serving_profile(serve),
             f"Sizes: {sizes}."]
    return "\n".join(lines), notes


def restore_row(restore: dict) -> tuple:
    ratio = restore["load_s"] / restore["raw_fresh_read_s"]
    return (f"Restore {restore['mib']:.0f} MiB as {restore['parts']} variable"
            f"{'s' if restore['parts'] > 1 else ''} (page cache, huge pages)",
            f"load {restore['load_s']:.2f} s, of which TF's RestoreV2 alone {restore['tf_read_s']:.2f}"
            f" s; raw read {restore['raw_fresh_read_s']:.2f} s into new memory, "
            f"{restore['raw_read_s']:.2f} s into a reused buffer",
            f"{ratio:.2f}x new-memory read", "<= 1.3x raw read", ratio <= 1.3)


def serving_rows(serve: dict) -> list[tuple]:
    quiet, swapping, limit = serve["quiet"], serve["swapping"], serve["inprocess"]

    def load(run):
        return (f"{run['requests_per_s']:.0f} req/s, p50 {ms(run['p50'])}, p99 {ms(run['p99'])}, "
                f"{run['failed']} failed of {run['answers']}")

    p99_ratio = swapping["p99"] / quiet["p99"]
    every = f"{serve['interval'] * 1000:.0f} ms"
    return [
        (f"Serving, a swap every {every} ({serve['swaps']} swaps)", load(swapping),
         f"p99 {p99_ratio:.2f}x the run without swaps", "p99 <= 1.5x, 0 failed",
         p99_ratio <= 1.5 and swapping["failed"] == 0 and quiet["failed"] == 0),
        ("Serving, no swaps (same publisher load, unwatched dir)", load(quiet), "baseline", "",
         None),
        ("Serving staleness, commit to first answer",
         f"p50 {ms(serve['staleness_p50'])}, max {ms(serve['staleness_max'])}",
         f"{1.0 / serve['staleness_p50']:.0f}x inside TF Serving's 1 s poll", "p50 < 10 ms",
         serve["staleness_p50"] < 0.010),
        ("Serving throughput against the in-process limit",
         f"{quiet['requests_per_s']:.0f} req/s over HTTP",
         f"{quiet['requests_per_s'] / limit['requests_per_s']:.2f}x the "
         f"{limit['requests_per_s']:.0f} Session.run/s of one process", "report", None),
    ]


def cluster_rows(run: dict) -> list[tuple]:
    alone, one, two = run["alone"], run["one_worker"], run["two_workers"]
    return [
        ("Cluster training, mlp, 1 ps + 2 workers", f"{two:,.0f} examples/s",
         f"{two / one:.2f}x one worker; {two / alone:.2f}x the producer alone", "report", None),
        ("Cluster training, mlp, 1 ps + 1 worker", f"{one:,.0f} examples/s",
         f"{one / alone:.2f}x the producer alone", "", None),
        ("Producer alone, mlp, no cluster", f"{alone:,.0f} examples/s "
         f"({run['batch']} a step, {run['steps']} steps)", "baseline", "", None),
    ]


def serving_profile(serve: dict) -> str:
    limit, quiet = serve["inprocess"], serve["quiet"]
    return (f"Where a predict's time goes (mlp, one example, {serve['clients']} clients): "
            f"Session.run {ms(limit['session_run_s'])}; the whole Api.predict (JSON parse, "
            f"handle, run, render) {ms(limit['api_predict_s'])} in-process; in the server's pool "
            f"{ms(serve['server_predict_s'])} on average; at the client p50 {ms(quiet['p50'])}. "
            f"The rest is HTTP (uvicorn, h11, Starlette) and the client, all on 2 cores. "
            f"A swap under this load (medians): " + ", ".join(
                f"{name} {ms(seconds)}" for name, seconds in serve["load_phases"].items()) + ".")


def record(text: str) -> None:
    doc = DOC.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    DOC.write_text(re.sub(f"{BEGIN}.*?{END}", lambda _: block, doc, flags=re.S))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="everything small, in about a minute")
    parser.add_argument("--record", action="store_true", help="write docs/BENCHMARKS.md "
                        "(the default for a full run)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    warm = warm_starts(("consumer", "bench.publisher", "producer")) if args.quick else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="tf-handoff-bench-") as tmp, warm:
        tmp = Path(tmp)
        native = handoff_run("checkpoints", 1, sizes, tmp)
        savedmodels = handoff_run("savedmodels", 1, sizes, tmp, kind="savedmodel")
        full = handoff_run("full", 1, sizes, tmp, extra=("--full-loads",))
        poll = handoff_run("poll", 1, sizes, tmp, extra=("--poll", "1"))
        baseline = handoff_run("baseline", 1, sizes, tmp, baseline=True)
        scaled = handoff_run("scale4", 4, sizes, tmp)
        memory = memory_run(sizes, tmp)
        big = bigmodel_run(sizes)
        serve = serving_run(sizes.serve_versions, 0.1, tmp)
        cluster = cluster_run(sizes.cluster_steps, tmp)
    results, notes = table(native, savedmodels, full, poll, baseline, scaled, memory, big, serve,
                           cluster, sizes)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = (f"Run of {when}, {'quick' if args.quick else 'full'}, "
            f"{time.monotonic() - started:.0f} s.\nMachine: {machine()}.\n\n{results}\n\n"
            + "\n".join(f"- {note}" for note in notes))
    print(text)
    if args.record or not args.quick:
        record(text)
        print(f"\nrecorded in {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
