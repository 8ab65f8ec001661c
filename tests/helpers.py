"""Start real processes for tests, through the same runner the demo and the bench use."""

from __future__ import annotations

import subprocess

from shared.processes import REPO, Process, command, env  # noqa: F401 - re-exported for tests


def run(module: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(module, *args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env())
