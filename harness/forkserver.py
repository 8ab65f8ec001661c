"""Warm starts for tests that start programs many times: a server process imports TensorFlow
and the programs once, then forks a child per start.

Each child is a real process: its own pid, signals, locks, pipes and exit code, killed with -9
for real. It runs the program's ``main()`` with ``sys.argv`` as ``python -m MODULE`` would set
it, but starts in a few milliseconds instead of the ~5 s TensorFlow's import costs on the 2-core
machine. The chaos test restarts the producer 12 times through it, the cluster tests start their
ps and workers with it, and a quick bench run its consumers, publishers and producers.

**Why forking after TensorFlow's import is safe.** ``fork`` copies only the calling thread; a
lock another thread held at that moment stays locked in the child forever. So what matters is
which threads the server runs when it forks. Importing TensorFlow starts none of its own: its
thread pools, gRPC and sessions start on first use, and the server never runs TensorFlow, it
imports it and waits. The one other thread after the import (``/proc/<server>/task`` lists
two) is OpenBLAS's worker pool, started by numpy's import (one thread per core but one, parked
on a futex); OpenBLAS registers a ``pthread_atfork`` handler that stops its pool before every
fork, and a child starts its own at its first BLAS call. So at the fork the server runs one
thread, itself: ``tests/test_harness.py`` checks that, and fails if an import ever starts a
thread that does not stop for a fork. The child inherits memory (the imported modules, TF's
registries, not-yet-started pools), the server's environment and working directory (the repo,
unless a start names another), and its signal dispositions (SIGINT ignored in the server: the
child sets Python's default back). It makes its own sessions, thread pools and gRPC servers.

**A child dies with its server.** It asks the kernel for SIGKILL when the server dies
(``PR_SET_PDEATHSIG``), so a server killed with -9 leaves no orphan running on under PID 1.
Its exit code then reaches no one: ``harness.processes`` sees its pid go and reports
``LostExit``.

**A child exits as the interpreter does.** After ``main()`` it joins the non-daemon threads and
runs the atexit callbacks, in that order, as ``Py_FinalizeEx`` does, and only then leaves with
``os._exit`` (a child must not run the server's own teardown). So a thread that never ends
hangs a forked child's exit as it hangs a cold process's, and tests run forked see it. Not
run: the interpreter's teardown of modules and objects (finalizers, ``__del__``): a hang there,
such as a TF session bound to a dead task blocking in its close, shows only in a cold start
(the producer's cluster path leaves with ``os._exit`` for that reason).

The server sets glibc's huge-page tunable itself (``consumer.hugepages``), so a consumer child
finds it set and does not execute itself again, which would throw the warm import away.

Protocol, over a SOCK_SEQPACKET socket pair (one message per send): the client sends
``{"module": NAME, "argv": [...], "cwd": DIR or null}`` as JSON with the child's stdout and
stderr pipes attached (SCM_RIGHTS); the server answers ``started PID``, and later
``exited PID CODE`` (CODE as ``subprocess`` gives it: -9 for SIGKILL).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import traceback

REAP_EVERY = 0.05  # seconds: how soon an exit is reported
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_LIBC = ctypes.CDLL(None, use_errno=True)


def serve(modules: list[str], fd: int) -> None:
    """The server's loop: fork a child per request until the client closes its end."""
    import shared.tfcompat  # noqa: F401 - the import every child would otherwise pay

    programs = {module: _program(module) for module in modules}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the test ends the client; EOF us
    sock = socket.socket(fileno=fd)
    sock.sendall(b"ready")
    server = os.getpid()
    children: set[int] = set()
    while True:
        if select.select([sock], [], [], REAP_EVERY)[0]:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 2)  # argv and environment
            if not message:  # the client is gone: leave no orphans behind
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                return
            pid = os.fork()
            if pid == 0:
                sock.close()
                _die_with(server)
                request = json.loads(message)
                _run_child(programs[request["module"]], request["argv"], request["cwd"],
                           request.get("env"), *fds)
            for descriptor in fds:
                os.close(descriptor)
            children.add(pid)
            sock.sendall(f"started {pid}".encode())
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            sock.sendall(f"exited {pid} {os.waitstatus_to_exitcode(status)}".encode())


def _program(module: str):
    """What ``python -m module`` runs: the module, or a package's ``__main__``."""
    program = importlib.import_module(module)
    if hasattr(program, "__path__"):
        program = importlib.import_module(f"{module}.__main__")
    return program


def _die_with(server: int) -> None:
    """In the child: have the kernel send SIGKILL when the server dies. A server killed with -9
    cannot kill its children itself. If it died before this call, the signal will never come:
    leave now."""
    if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(70)  # EX_SOFTWARE: no child may outlive its server unnoticed
    if os.getppid() != server:
        os._exit(70)


def _run_child(program, argv: list[str], cwd: str | None, environ: dict | None, stdout: int,
               stderr: int) -> None:
    """In the child: take the pipes as stdout and stderr, run ``program.main()`` on ``argv`` in
    ``cwd`` (else the server's) with the client's ``environ`` (else the server's), then exit
    with its code as ``sys.exit(main())`` under ``python -m`` would, the interpreter's exit
    steps included."""
    if cwd is not None:
        os.chdir(cwd)
    if environ is not None:  # what the program reads from now on (TF read its own at import)
        tunables = os.environ.get("GLIBC_TUNABLES")  # the server's: what its malloc runs with
        os.environ.clear()
        os.environ.update(environ)
        if tunables is not None:
            os.environ["GLIBC_TUNABLES"] = tunables
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    os.close(stdout)
    os.close(stderr)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = [program.__file__, *argv]
    code = 1
    try:
        code = program.main() or 0
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            sys.stderr.write(f"{exit_.code}\n")
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        _exit_steps()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exit_steps() -> None:
    """What ``Py_FinalizeEx`` runs first at a normal exit: wait for every non-daemon thread
    (``threading._shutdown``, the very function it calls), then the atexit callbacks (the
    program's, and those its modules registered at import in the server, as a cold process
    would have registered them)."""
    try:
        threading._shutdown()
    except BaseException:  # a Ctrl-C while joining: the interpreter prints it and goes on
        traceback.print_exc()
    atexit._run_exitfuncs()  # prints what a callback raises, as at a real exit


if __name__ == "__main__":
    serve(sys.argv[1].split(","), int(sys.argv[2]))
