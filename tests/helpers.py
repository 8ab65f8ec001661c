"""Real processes for tests: start a producer or consumer the way a user does, read its JSON logs."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def command(module: str, *args: str) -> list[str]:
    logging = [] if module == "shared.inspect" else ["--log-format", "json"]
    return [sys.executable, "-m", module, *logging, *map(str, args)]


def run(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(module, *args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=_env())


def events_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


class Process:
    """A running producer or consumer whose JSON log events are read as they come."""

    def __init__(self, module: str, *args: str) -> None:
        self.popen = subprocess.Popen(command(module, *args), cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=_env())
        self.events: list[dict] = []
        self.stderr = ""
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.popen.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                self.events.append(event)
                self._queue.put(event)
        self._queue.put(None)

    def _read_stderr(self) -> None:
        self.stderr = self.popen.stderr.read()

    def wait_for(self, match: Callable[[dict], bool], timeout: float = 120) -> dict:
        """The first event from now on that ``match`` accepts; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching event within {timeout}s; "
                                     f"last events: {self.events[-5:]}") from None
            if event is None:
                raise AssertionError(f"process exited ({self.popen.wait()}) before a matching "
                                     f"event; stderr: {self.stderr[-2000:]}")
            if match(event):
                return event

    def wait(self, timeout: float = 120) -> int:
        return self.popen.wait(timeout=timeout)

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
