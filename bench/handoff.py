"""The handoff bench: how long from a version's commit until a watcher has it ready, for our
consumer (warm swap, full load, polling, several consumers) and for TF's own
``checkpoints_iterator``; memory over hundreds of reloads; and the restore of a big model.

A paced publisher (``bench/publisher.py``) commits versions; each watcher is a separate process.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from bench import ms, percentile, start
from harness.processes import event_time


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
    seconds: float  # per throughput run (wrk, clients)
    moves: int  # label moves in the rollback run
    store_mib: int  # the object store's download run
    fleet_versions: int  # versions published to a bucket three servers read
    big_swap: tuple[int, int, float]  # MiB of variables, versions, seconds between them
    long_life: tuple[int, int]  # warm swaps, full loads


FULL = Sizes(versions=60, interval=0.25, reloads=500, reload_interval=0.08, restore_mib=1024,
             stall_mib=256, stall_steps=400, stall_every=100, serve_versions=100,
             cluster_steps=6000, seconds=10, moves=20, store_mib=1024, fleet_versions=8,
             big_swap=(1024, 7, 10.0), long_life=(10_000, 1000))
QUICK = Sizes(versions=6, interval=0.15, reloads=25, reload_interval=0.05, restore_mib=32,
              stall_mib=16, stall_steps=100, stall_every=50, serve_versions=8,
              cluster_steps=300, seconds=1, moves=2, store_mib=32, fleet_versions=2,
              big_swap=(64, 2, 1.5), long_life=(600, 20))


def handoff_run(name: str, consumers: int, sizes: Sizes, tmp: Path, *, baseline: bool = False,
                kind: str = "checkpoint", extra: tuple = (), versions: int | None = None,
                interval: float | None = None) -> dict:
    """Publish versions of ``kind`` at a steady pace; for each published version, the latency is
    from its commit (the rename that made it visible) until the watcher has it or a newer one
    ready. ``extra`` are consumer options."""
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
    visible = {commit["step"]: commit["visible_at"] for commit in commits}
    latencies, recorded, loads = [], [], []
    for watcher in watchers:
        loaded = [(e["step"], e.get("ready_at") or event_time(e))
                  for e in watcher.named("model_loaded")]
        loads += [{**e, "visible_at": visible.get(e["step"])}
                  for e in watcher.named("model_loaded")]
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
    process = start("bench.bigmodel", "--restore-mib", sizes.restore_mib, "--stall-mib",
                    sizes.stall_mib, "--stall-steps", sizes.stall_steps, "--stall-every",
                    sizes.stall_every)
    assert process.wait(timeout=900) == 0, process.stderr[-2000:]
    return {line["bench"]: line for line in process.events if "bench" in line}


def phases(run: dict, load: str) -> dict:
    """Median seconds per phase of the consumer's ``load`` (warm or full) loads, and the rest
    of the handoff from the commit's rename: noticing it, and listing the directory."""
    events = [e for e in run["events"] if e.get("load") == load]
    names = dict.fromkeys(name for e in events for name in e["phases"])
    split = {name: statistics.median(e["phases"][name] for e in events) for name in names}
    split["notice"] = statistics.median(e["ready_at"] - e["visible_at"] - e["load_seconds"]
                                        for e in events if e["visible_at"] is not None)
    return split


def handoff_rows(native, savedmodels, full, poll, baseline, scaled, memory,
                 big) -> list[tuple]:
    def latency(run):
        return (f"p50 {ms(run['p50'])}, p95 {ms(run['p95'])}, max {ms(run['max'])} over "
                f"{run['published']} versions ({run['loaded']} loads); from the recorded time "
                f"p50 {ms(run['recorded_p50'])}, p95 {ms(run['recorded_p95'])}")

    def warm(run):
        ahead = baseline["p50"] / run["p50"]
        return (f"{ahead:.0f}x faster than TF's iterator (p50)",
                "p50 <= 3.5 ms, p95 <= 6.5 ms, >= 200x",
                run["p50"] <= 0.0035 and run["p95"] <= 0.0065 and ahead >= 200)

    stall = big["stall"]
    return [
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
    ]


def handoff_notes(native, savedmodels, full, big) -> list[str]:
    restore = big["restore1"]
    notes = [f"Where a {load} handoff's time goes (medians, {run['name']}, from the rename): "
             + ", ".join(f"{name} {ms(seconds)}" for name, seconds in phases(run, load).items())
             + "." for run, load in ((native, "warm"), (savedmodels, "warm"), (full, "full"))]
    return notes + [f"Restore split, one variable: TF's RestoreV2 alone (read + crc32c) "
                    f"{restore['tf_read_s']:.2f} s, restore with assign {restore['restore_s']:.2f}"
                    f" s, whole load {restore['load_s']:.2f} s."]


def restore_row(restore: dict) -> tuple:
    ratio = restore["load_s"] / restore["raw_fresh_read_s"]
    return (f"Restore {restore['mib']:.0f} MiB as {restore['parts']} variable"
            f"{'s' if restore['parts'] > 1 else ''} (page cache, huge pages)",
            f"load {restore['load_s']:.2f} s, of which TF's RestoreV2 alone "
            f"{restore['tf_read_s']:.2f} s; raw read {restore['raw_fresh_read_s']:.2f} s into new "
            f"memory, {restore['raw_read_s']:.2f} s into a reused buffer",
            f"{ratio:.2f}x new-memory read", "<= 1.3x raw read", ratio <= 1.3)
