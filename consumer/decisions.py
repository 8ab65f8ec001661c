"""The gate's decisions, kept in ``<work-dir>/gate.json`` so that they outlive the process: the
versions refused and why, those an operator accepted anyway, and the version that served last
with its score. ``consumer.gate`` makes the decisions; this module only keeps them, without
TensorFlow, so that an operator's command is instant:

    python -m consumer.decisions --work-dir work/mlp list
    python -m consumer.decisions --work-dir work/mlp accept 1500

A running server reads the file again at its next scan (within ``--rescan``, or at once on a
new version), and loads an accepted version without the gate's regression check.

Two processes write the file, the server and an operator's command: each writes under a lock
(``gate.json.lock``) and merges what the other wrote since its last read, so an operator's
``accept`` is never overwritten. A write that fails (a full or read-only disk) is logged as
``record_failed`` when it starts and ``record_recovered`` when it clears; the decisions stay in
memory, serving goes on, and the write is tried again at each scan.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from shared import cli, durable, logs

DECISIONS = "gate.json"
PROG = "decisions"

log = logs.get("consumer")


def identity_key(identity: tuple) -> str:
    """A version's identity (path, commit stamp) as the text gate.json keys it by."""
    path, stamp = identity
    return f"{path}@{stamp!r}"


class Decisions:
    """gate.json: the refused versions and the one that served last, written whole each time."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.refused: dict[str, dict] = {}  # identity key -> {step, reason}
        self.accepted: set[str] = set()  # refused, then taken by an operator
        self.served: dict | None = None  # {step, path, loss, dataset}
        self._stamp = None
        self._unaccepted: set[str] = set()  # accepts this process took back since its last save
        self._served_changed = False  # this process set ``served`` since its last save
        self._unsaved = False  # a save failed: tried again at the next reload
        self._news = False  # another writer's decisions merged in since the last reload
        self._failing: str | None = None  # the save's error, logged when it starts
        self.reload()

    def reload(self) -> bool:
        """Read the file again if it changed (an operator's ``accept``); whether another
        writer's decisions came in since the last call (here, or merged by a save). A save that
        failed before is tried again here."""
        if self.path is None:
            return False
        if self._unsaved:
            self.save()
        try:
            stamp = _stamp(self.path)
        except OSError:  # none yet, or unreadable: what is in memory stands
            stamp = None
        if stamp is not None and stamp != self._stamp:
            self._merge_from_disk(stamp)
        news, self._news = self._news, False  # a save's merge may have brought some too
        return news

    def _merge_from_disk(self, stamp: tuple) -> None:
        """Take in what another writer saved: its refusals and accepts join ours (an accept
        taken back here stays taken back); the served version is the newer writer's."""
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            log.warning("gate_decisions_unreadable", path=str(self.path), error=str(err))
            return
        self._stamp = stamp
        if not isinstance(saved, dict):
            return
        before = (dict(self.refused), set(self.accepted), self.served)
        self.refused = {**saved.get("refused", {}), **self.refused}
        self.accepted |= set(saved.get("accepted", [])) - self._unaccepted
        if not self._served_changed:
            self.served = saved.get("served", self.served)
        self._news |= (self.refused, self.accepted, self.served) != before

    def set_served(self, entry: dict) -> None:
        self.served = entry
        self._served_changed = True

    def unaccept(self, key: str) -> None:
        self.accepted.discard(key)
        self._unaccepted.add(key)

    def save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(self.path):
                # merged whatever its stamp says: two writes within one tick of the kernel's
                # coarse clock share an mtime, and a small file costs nothing to read
                try:
                    self._merge_from_disk(_stamp(self.path))
                except FileNotFoundError:
                    pass
                durable.write_atomic(self.path, json.dumps(
                    {"refused": self.refused, "accepted": sorted(self.accepted),
                     "served": self.served}, indent=1).encode())
                self._stamp = _stamp(self.path)
        except OSError as err:  # a full or read-only disk: kept in memory, written later
            self._unsaved = True
            if str(err) != self._failing:
                log.error("record_failed", path=str(self.path), error=str(err),
                          reason="the gate's decisions stay in memory and serving goes on; "
                                 "the write is tried again at each scan")
            self._failing = str(err)
            return
        self._unsaved, self._unaccepted, self._served_changed = False, set(), False
        if self._failing is not None:
            log.info("record_recovered", path=str(self.path), error=self._failing)
            self._failing = None


def _stamp(path: Path) -> tuple:
    """What tells one write of the file from another: each is a new file renamed into place
    (a new inode), and its mtime alone may repeat within a clock tick."""
    stat = path.stat()
    return (stat.st_mtime_ns, stat.st_ino, stat.st_size)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path``, held while its content is merged and written."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, required=True,
                        help="the model's work dir (model_server: <--work_dir>/<model>)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the refused versions and why")
    accept = commands.add_parser("accept", help="take a refused version on purpose")
    accept.add_argument("version", type=cli.non_negative_int)
    args = parser.parse_args(argv)
    logs.configure(None, sys.stderr)
    decisions = Decisions(args.work_dir / DECISIONS)
    if args.command == "list":
        for key, entry in sorted(decisions.refused.items(), key=lambda kv: kv[1]["step"]):
            state = "accepted" if key in decisions.accepted else "refused"
            print(f"{entry['step']}\t{state}\t{entry['reason']}")
        return 0
    keys = [key for key, entry in decisions.refused.items() if entry["step"] == args.version]
    if not keys:
        cli.fail(PROG, f"version {args.version} is not refused in {decisions.path}")
    decisions.accepted.update(keys)
    decisions.save()
    if decisions._unsaved:
        cli.fail(PROG, f"cannot write {decisions.path}: {decisions._failing}")
    log.warning("refusal_overridden", step=args.version, path=str(decisions.path),
                reason="accepted by an operator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
