"""Warm starts for tests that start one program many times: a server process imports
TensorFlow and the program once, then forks a child per start.

Each child is a real process: its own pid, signals, locks, pipes and exit code, killed with -9
for real. It runs the program's ``main()`` with ``sys.argv`` as ``python -m MODULE`` would set
it, but starts in a few milliseconds instead of the ~5 s TensorFlow's import costs on the 2-core
machine. The chaos test restarts the producer 25 times through it, the cluster tests start their
ps and workers with it, and a quick bench run its consumers, publishers and producers.

Forking is safe here because the server never *runs* TensorFlow: it imports it and waits. A
child makes its own sessions, thread pools and gRPC servers after the fork.

The server sets glibc's huge-page tunable itself (``consumer.hugepages``), so a consumer child
finds it set and does not execute itself again, which would throw the warm import away.

Protocol, over a SOCK_SEQPACKET socket pair (one message per send): the client sends
``{"argv": [...], "cwd": DIR or null}`` as JSON with the child's stdout and stderr pipes attached
(SCM_RIGHTS); the server answers
``started PID``, and later ``exited PID CODE`` (CODE as ``subprocess`` gives it: -9 for SIGKILL).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import sys
import traceback

REAP_EVERY = 0.05  # seconds: how soon an exit is reported


def serve(module: str, fd: int) -> None:
    """The server's loop: fork a child per request until the client closes its end."""
    import shared.tfcompat  # noqa: F401 - the import every child would otherwise pay

    program = importlib.import_module(module)
    if hasattr(program, "__path__"):  # a package: ``python -m`` runs its __main__
        program = importlib.import_module(f"{module}.__main__")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the test ends the client; EOF us
    sock = socket.socket(fileno=fd)
    sock.sendall(b"ready")
    children: set[int] = set()
    while True:
        if select.select([sock], [], [], REAP_EVERY)[0]:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)
            if not message:  # the client is gone: leave no orphans behind
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                return
            pid = os.fork()
            if pid == 0:
                sock.close()
                request = json.loads(message)
                _run_child(program, request["argv"], request["cwd"], *fds)
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


def _run_child(program, argv: list[str], cwd: str | None, stdout: int, stderr: int) -> None:
    """In the child: take the pipes as stdout and stderr, run ``program.main()`` on ``argv`` in
    ``cwd`` (else the server's), and exit with its code, as ``sys.exit(main())`` under
    ``python -m`` would."""
    if cwd is not None:
        os.chdir(cwd)
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
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
