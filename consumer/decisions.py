"""The gate's decisions, kept in ``<work-dir>/gate.json`` so that they outlive the process: the
versions refused and why, those an operator accepted anyway, and the version that served last
with its score. ``consumer.gate`` makes the decisions; this module only keeps them, without
TensorFlow, so that an operator's command is instant:

    python -m consumer.decisions --work-dir work/mlp list
    python -m consumer.decisions --work-dir work/mlp accept 1500

A running server reads the file again at its next scan (within ``--rescan``, or at once on a
new version), and loads an accepted version without the gate's regression check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
        self.reload()

    def reload(self) -> bool:
        """Read the file again if it changed (an operator's ``accept``); whether it did."""
        if self.path is None:
            return False
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            log.warning("gate_decisions_unreadable", path=str(self.path), error=str(err))
            return False
        self.refused = saved.get("refused", {})
        self.accepted = set(saved.get("accepted", []))
        self.served = saved.get("served")
        return True

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        durable.write_atomic(self.path, json.dumps(
            {"refused": self.refused, "accepted": sorted(self.accepted), "served": self.served},
            indent=1).encode())
        self._stamp = self.path.stat().st_mtime_ns


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
    log.warning("refusal_overridden", step=args.version, path=str(decisions.path),
                reason="accepted by an operator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
