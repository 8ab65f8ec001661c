"""``make bench ARGS=--quick`` runs end to end, so the benchmarks never rot. It checks that
every row is there with real figures, never how fast they are: timing belongs in bench/."""

import re
import subprocess

from harness.processes import REPO, command, env


def test_quick_bench_prints_every_row_with_figures(tmp_path):
    before = (REPO / "docs" / "BENCHMARKS.md").read_text()
    result = subprocess.run(command("bench", "--quick"), cwd=REPO, capture_output=True,
                            text=True, env=env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert [n.split(",")[0].split(" ")[0] for n in names] == \
        ["Handoff"] * 6 + ["Memory", "Restore", "Restore", "Checkpoint"] + ["Serving"] * 4 \
        + ["Cluster", "Cluster", "Producer"]
    serving = "\n".join(rows[11:15])
    assert re.search(r"\d+ req/s, p50 [\d.]+ ms, p99 [\d.]+ ms, \d+ failed of \d+", serving)
    assert re.search(r"p50 [\d.]+ ms, max [\d.]+ ms", serving)
    assert "Where a predict's time goes" in result.stdout
    for row in rows[1:7]:
        assert re.search(r"p50 [\d.]+ ms, p95 [\d.]+ ms, max [\d.]+ ms over \d+ versions", row), row
    assert "Where a warm handoff's time goes" in result.stdout
    assert "Where a full handoff's time goes" in result.stdout
    for row in rows[15:18]:  # examples per second of the mlp: alone, and on a local cluster
        assert re.search(r"\| [\d,]+ examples/s", row), row
    assert "calibration: a 10M-turn Python loop" in result.stdout
    assert (REPO / "docs" / "BENCHMARKS.md").read_text() == before  # quick runs record nothing
