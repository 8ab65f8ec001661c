"""The Makefile: `make help` lists every target, each with its one line."""

import re
import subprocess

from tests.helpers import REPO


def test_make_help_lists_every_target_with_one_line():
    phony = re.search(r"^\.PHONY: (.*)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
    result = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    described = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert sorted(described) == sorted(phony)
    assert all(len(line.split()) > 2 for line in described.values())  # a name and a description


def test_make_demo_runs_end_to_end():
    """The README's promise, small: producer, evaluating consumer, server and client, all real
    processes, every exit 0 and the client's last answer from the last version."""
    result = subprocess.run(["make", "-s", "demo", "ARGS=--steps 400 --export-every 200"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "exit codes:         producer 0, consumer 0, server 0" in result.stdout
    assert re.search(r"client got \d+ answers from 2 versions, 0 failed", result.stdout), \
        result.stdout
