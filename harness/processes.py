"""Run a producer, consumer or bench process as a child, the way a user starts it, and read its
JSON log events as they come. Used by ``make demo``, ``make bench`` and the tests."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
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


class LostExit(int):
    """The exit code of a forked child whose server died first: only the server, its parent,
    could learn the real one. The child died with it (the kernel's SIGKILL), or before."""

    CODE = -256  # no process exits with it: subprocess gives 0..255, or -N for signal N

    def __new__(cls) -> "LostExit":
        return super().__new__(cls, cls.CODE)

    def __repr__(self) -> str:
        return f"LostExit({self.CODE}: the fork server died before the child's exit reached it)"


def _pid_gone(pid: int) -> bool:
    """Whether ``pid`` has ended: no such process, or a zombie nobody reaped yet (PID 1 in a
    container may never reap it; ``os.kill(pid, 0)`` would still succeed on it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


class ForkedChild:
    """A child of a ``ForkServer``, with the part of ``subprocess.Popen`` that ``Process`` uses.
    Its exit code comes from the server, its parent; if the server dies first, ``wait`` polls
    the pid instead and gives ``LostExit`` once it is gone."""

    LOST_POLL = 0.05  # seconds between looks at the pid, once the server is gone

    def __init__(self, pid: int, stdout: int, stderr: int,
                 server_lost: threading.Event | None = None) -> None:
        self.pid, self.returncode = pid, None
        self.stdout, self.stderr = open(stdout, errors="replace"), open(stderr, errors="replace")
        self._exited = threading.Event()
        self._server_lost = server_lost or threading.Event()

    def _exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        if (self.returncode is None and self._server_lost.is_set()
                and _pid_gone(self.pid)):
            self._exit(LostExit())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"forked child {self.pid}", timeout)
            if self._server_lost.is_set():
                self._exited.wait(self.LOST_POLL if left is None else min(left, self.LOST_POLL))
            else:  # the server reports the exit; look again now and then in case it dies
                self._exited.wait(1.0 if left is None else min(left, 1.0))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """Starts ``python -m MODULE`` children warm, forked from a server that imported TensorFlow
    and each of its modules once (``harness.forkserver``): a few ms a start instead of ~5 s.
    For tests that start programs many times; ``Process(..., server=...)`` takes it."""

    def __init__(self, *modules: str, timeout: float = 120) -> None:
        from consumer import hugepages

        self.modules = modules
        self._socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), hugepages.TUNABLE]))
        self._server = subprocess.Popen(
            [sys.executable, "-m", "harness.forkserver", ",".join(modules),
             str(theirs.fileno())], cwd=REPO, pass_fds=[theirs.fileno()],
            env={**env(), "GLIBC_TUNABLES": tunables}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        theirs.close()
        self._socket.settimeout(timeout)
        try:
            ready = self._socket.recv(64)
        except TimeoutError:
            ready = b""
        if ready != b"ready":
            self._server.kill()
            self._socket.close()
            raise RuntimeError(f"fork server for {', '.join(modules)} did not start: "
                               f"{self._server.communicate()[1][-2000:]!r}")
        self._socket.settimeout(None)
        self._children: dict[int, ForkedChild] = {}
        self._exits: dict[int, int] = {}  # of children not registered yet: a fast exit 2
        self._started: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # one spawn at a time: replies come in request order
        self._registry = threading.Lock()
        self.lost = threading.Event()  # the server died: its children's exits are not reported
        threading.Thread(target=self._read_replies, daemon=True).start()

    @property
    def pid(self) -> int:
        """The server's own process id."""
        return self._server.pid

    def _read_replies(self) -> None:
        try:
            self._relay_replies()
        except OSError:  # the socket closed under us (``close``), or the server reset it
            pass
        self.lost.set()

    def _relay_replies(self) -> None:
        while message := self._socket.recv(256).decode():  # b"": the server is gone
            word, pid, *code = message.split()
            if word == "started":
                self._started.put(int(pid))
                continue
            with self._registry:
                child = self._children.pop(int(pid), None)
                if child is None:
                    self._exits[int(pid)] = int(code[0])
            if child is not None:
                child._exit(int(code[0]))

    def spawn(self, module: str, argv: list[str], cwd: str | os.PathLike | None = None,
              environ: dict | None = None) -> ForkedChild:
        """A child running ``module``'s ``main()`` on ``argv`` in ``cwd`` (else the repo), its
        stdout and stderr piped to us; with ``environ`` as its environment (else the server's:
        a child inherits what its fork server started with, not what we set since)."""
        if self.lost.is_set():
            raise RuntimeError(f"the fork server for {', '.join(self.modules)} is gone")
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        request = {"module": module, "argv": argv, "cwd": None if cwd is None else str(cwd),
                   "env": environ}
        with self._lock:
            socket.send_fds(self._socket, [json.dumps(request).encode()], [out_write, err_write])
            os.close(out_write)
            os.close(err_write)
            pid = self._started.get(timeout=30)
        child = ForkedChild(pid, out_read, err_read, self.lost)
        with self._registry:
            if pid in self._exits:
                child._exit(self._exits.pop(pid))
            else:
                self._children[pid] = child
        return child

    def close(self) -> None:
        """The server kills what it still runs, and exits."""
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._server.wait(timeout=30)
        self._server.stderr.close()
        self._socket.close()


def event_time(event: dict) -> float:
    """An event's ``timestamp`` as seconds since the epoch."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


class Process:
    """A running child whose JSON log lines are parsed on a reader thread."""

    started: list[Process] = []  # every one started in this process, in order

    @classmethod
    def kill_survivors(cls, since: int = 0) -> int:
        """Kill every child started after the first ``since`` that still runs (a test that
        failed before it stopped its own); how many there were."""
        survivors = [p for p in cls.started[since:] if p.popen.poll() is None]
        for process in survivors:
            process.kill()
        return len(survivors)

    def __init__(self, module: str, *args, on_event: Callable[[dict], None] | None = None,
                 preexec_fn: Callable[[], None] | None = None,
                 server: ForkServer | None = None, cwd: str | os.PathLike | None = None,
                 environ: dict | None = None) -> None:
        """``preexec_fn`` runs in the child before it starts: a test sets a resource limit.
        With a ``server`` (for ``module``), the child is forked warm from it. It runs in ``cwd``,
        else in the repo, with ``environ``, else ``env()`` cold or the server's warm."""
        if server is not None:
            assert module in server.modules and preexec_fn is None
            self.popen = server.spawn(module, command(module, *args)[3:], cwd,  # past "-m module"
                                      environ)
        else:
            self.popen = subprocess.Popen(command(module, *args), cwd=cwd or REPO,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, env=environ or env(),
                                          preexec_fn=preexec_fn)
        Process.started.append(self)
        self.events: list[dict] = []
        self.text: list[str] = []  # stdout's other lines: a program that logs JSON prints none
        self.stderr = ""
        self._on_event = on_event
        self.callback_error: Exception | None = None  # what ``on_event`` raised, if it did
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
                if self._on_event and self.callback_error is None:
                    try:
                        self._on_event(event)
                    except Exception as err:  # raised by ``wait_for``, not lost with this thread
                        self.callback_error = err
                self._queue.put(event)
            else:
                self.text.append(line)
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
            if self.callback_error is not None:
                raise AssertionError(f"on_event failed: {self.callback_error!r}")
            if event is None:
                raise AssertionError(f"process exited ({self.popen.wait()}) before a matching "
                                     f"event; stderr: {self.stderr[-2000:]}")
            if match(event):
                return event

    def wait_seen(self, match: Callable[[dict], bool], timeout: float = 120) -> dict:
        """The first event ever received that ``match`` accepts, waiting for it if none has come
        yet: unlike ``wait_for``, it finds an event that came while another was awaited."""
        for event in list(self.events):
            if match(event):
                return event
        return self.wait_for(match, timeout)

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
