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
