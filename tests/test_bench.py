"""``make bench ARGS=--quick`` runs end to end, so the benchmarks never rot. It checks that
every row is there with real figures, never how fast they are: timing belongs in bench/."""

import re
import shutil
import subprocess

import pytest

from harness.processes import REPO, command, env

TIME = r"[\d.,]+ (ns|µs|ms|s)"  # every unit the bench prints a duration in


pytestmark = pytest.mark.bench  # `make bench-check` runs it; `make test` leaves it out (time)


# `make test` installs wrk first (`make tools`); without it the bench refuses to start.
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is missing: `make tools` installs it")
def test_quick_bench_prints_every_row_with_figures(tmp_path):
    before = (REPO / "docs" / "BENCHMARKS.md").read_text()
    result = subprocess.run(command("bench", "--quick"), cwd=REPO, capture_output=True,
                            text=True, env=env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert [n.split(",")[0].split(" ")[0].rstrip(":") for n in names] == \
        ["Handoff"] * 6 + ["Memory", "Restore", "Restore", "Checkpoint"] + ["Serving"] * 12 \
        + ["Batching", "No", "Rollback"] + ["Cluster", "Cluster", "Producer"] \
        + ["Serving"] * 8 + ["Big"] * 2 + ["Long"] * 2 + ["Object"] * 2 + ["Fleet"]
    by_name = dict(zip(names, rows[1:]))
    for row in rows[1:7]:
        assert re.search(rf"p50 {TIME}, p95 {TIME}, max {TIME} over \d+ versions", row), row
    serving = "\n".join(rows[11:23])
    # a figure's unit follows its size (939 µs on a fast machine, 1.8 ms here): accept each
    assert re.search(rf"\d+ req/s, p50 {TIME}, p99 {TIME}, \d+ failed of \d+", serving)
    assert re.search(rf"staleness.*p50 {TIME}, max {TIME}", serving)
    for name in ("REST predict, mlp, one example", "gRPC predict", "overload"):
        row = next(r for n, r in by_name.items() if name in n)
        assert re.search(r"[\d,]+ (req|answered)/s", row), row
    for connections in (64, 256):  # the defaults shed by queueing delay: how many refused
        row = by_name[f"Serving, {connections} connections, no batching, the defaults (wrk)"]
        assert re.search(rf"[\d,]+ of [\d,]+ refused, \d+ errors \| p99 \d+x the idle", row), row
    assert re.search(r"[\d.]+x without batching", by_name[names[22]])
    assert re.search(r"0 failed and 0 from a version it did not name", by_name[names[24]])
    for row in rows[26:29]:  # examples per second of the mlp: alone, and on a local cluster
        assert re.search(r"\| [\d,]+ examples/s", row), row
    for note in ("Where a warm handoff's time goes", "Where a full handoff's time goes",
                 "A swap under the serving load", "Where a REST predict's time goes",
                 "Where a gRPC predict's time goes", "calibration: a 10M-turn Python loop"):
        assert note in result.stdout, note
    new = dict(zip(names[28:], rows[29:]))  # this round's: gRPC and OIP by h2load, big swaps,
    for name, row in new.items():           # a long life, the object store, a fleet
        assert re.search(r"\d", row.split("|")[2]), row  # a figure, whatever its unit
    assert all(" 0 not OK of " in r for n, r in new.items() if "h2load" in n), new
    assert re.search(rf"commit to live p50 {TIME}", by_name[names[36]]), names[36]
    assert re.search(r"slope [+-][\d.]+ MiB per 1,000", by_name[names[38]]), names[38]
    assert re.search(rf"p50 {TIME}, p95 {TIME}; spread", by_name[names[42]]), names[42]
    assert (REPO / "docs" / "BENCHMARKS.md").read_text() == before  # quick runs record nothing
