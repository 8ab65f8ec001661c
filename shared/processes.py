"""Run a producer, consumer or bench process as a child, the way a user starts it, and read its
JSON log events as they come. Used by ``make demo``, ``make bench`` and the tests."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    """Ports free on localhost now, for a local cluster (held open together, so all differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def local_cluster(workers: int = 2, ps: int = 1) -> str:
    """A cluster spec on free localhost ports, as ``--cluster`` takes it."""
    ports = [f"127.0.0.1:{port}" for port in free_ports(ps + workers)]
    return json.dumps({"ps": ports[:ps], "worker": ports[ps:]})


def command(module: str, *args) -> list[str]:
    logging = ["--log-format", "json"] if module in ("producer", "consumer") else []
    return [sys.executable, "-m", module, *logging, *map(str, args)]


def env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def event_time(event: dict) -> float:
    """An event's ``timestamp`` as seconds since the epoch."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


class Process:
    """A running child whose JSON log lines are parsed on a reader thread."""

    def __init__(self, module: str, *args, on_event: Callable[[dict], None] | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        """``preexec_fn`` runs in the child before it starts: a test sets a resource limit."""
        self.popen = subprocess.Popen(command(module, *args), cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env(),
                                      preexec_fn=preexec_fn)
        self.events: list[dict] = []
        self.stderr = ""
        self._on_event = on_event
        self._queue: queue.Queue = queue.Queue()
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.popen.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                self.events.append(event)
                if self._on_event:
                    self._on_event(event)
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
        code = self.popen.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]

    def terminate(self, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
        return self.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
