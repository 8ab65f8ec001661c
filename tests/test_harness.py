"""The harness's fork server, with a small program of its own (``tests.exit_probe``): a child
forked warm exits as a cold one does, it dies with its server, and waiting for it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import pytest

from harness.processes import ForkServer, LostExit, Process

PROBE = "tests.exit_probe"


@pytest.fixture(scope="module")
def probe_server():
    server = ForkServer(PROBE)
    yield server
    server.close()


def _names(process: Process) -> list[str]:
    return [event["event"] for event in process.events]


def test_a_forked_child_runs_the_exit_a_cold_process_runs(probe_server):
    """Before, the child left by ``os._exit`` at once: no join of its non-daemon threads, no
    atexit callbacks. A hang at exit showed only in a cold start."""
    cold = Process(PROBE, "exit")
    warm = Process(PROBE, "exit", server=probe_server)
    assert cold.wait() == 3 and warm.wait() == 3, (cold.stderr, warm.stderr)
    assert _names(cold) == ["main_returned", "thread_finished", "atexit_ran"]
    assert _names(warm) == _names(cold), warm.stderr


def test_the_server_forks_with_no_thread_but_its_own(probe_server):
    """The docstring's argument for forking after TensorFlow's import: at each fork the server
    runs one thread, so no lock can be held by a thread the child does not have."""
    child = Process(PROBE, "wait", server=probe_server)
    try:
        child.wait_for(lambda e: e["event"] == "waiting")
        assert os.listdir(f"/proc/{probe_server.pid}/task") == [str(probe_server.pid)]
    finally:
        child.kill()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_children_die_with_their_server_and_waiting_for_them_ends():
    """Before, a child outlived a server killed with -9, reparented to PID 1, and ``wait`` or
    ``kill`` on it never returned: only the dead server could have reported its exit."""
    server = ForkServer(PROBE)
    child = Process(PROBE, "wait", server=server)
    try:
        child.wait_for(lambda e: e["event"] == "waiting")
        os.kill(server.pid, signal.SIGKILL)
        code = child.popen.wait(timeout=30)  # the harness sees the pid go
        assert isinstance(code, LostExit) and code == LostExit.CODE, code
        assert _gone(child.popen.pid)  # the kernel killed it with its server
        killer = threading.Thread(target=child.kill, daemon=True)
        killer.start()
        killer.join(timeout=30)
        assert not killer.is_alive(), "Process.kill() did not return"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.popen.pid, signal.SIGKILL)
        server.close()
