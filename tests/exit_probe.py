"""A program for the harness's tests, run cold (``python -m tests.exit_probe``) and forked.

``exit``: ``main()`` returns 3 and leaves two things for the exit to run, each printing an
event: a non-daemon thread that waits for the main thread to end, and an atexit callback. A
normal exit runs both, in that order (the interpreter joins threads before atexit), then exits 3.
``wait``: prints ``waiting`` and blocks until it is killed.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading


def say(event: str) -> None:
    print(json.dumps({"event": event}), flush=True)


def _after_main() -> None:
    threading.main_thread().join()  # released by the interpreter's shutdown, once main is done
    say("thread_finished")


def main() -> int:
    if sys.argv[1:] == ["wait"]:
        say("waiting")
        threading.Event().wait()
    atexit.register(say, "atexit_ran")
    threading.Thread(target=_after_main).start()
    say("main_returned")
    return 3


if __name__ == "__main__":
    sys.exit(main())
