"""The rollback bench: the ``stable`` label moved back and forth between two loaded versions
of the mlp, by rewriting the server's ``--model_config_file`` (renamed into place, as a config
push does), while 4 keep-alive clients send one-example predicts to ``/labels/stable``.

Per move: from the config file's rename to the first answer from the version the label now
names. Latency p99 while the label moves against p99 of the same clients before any move, and
every answer checked: its status, and that it came from a version the label named at the time.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from bench import ms, percentile, start
from bench.throughput import MLP_BODY
from harness.processes import event_time, free_ports
from harness.rest_client import RestClient

CLIENTS = 4
PATH = "/v1/models/mlp/labels/stable:predict"


def _config(base: Path, stable: int) -> str:
    return ('model_config_list { config { name: "mlp" base_path: "%s" model_platform: '
            '"tensorflow" model_version_policy { specific { versions: 1 versions: 2 } } '
            'version_labels { key: "stable" value: %d } } }\n' % (base, stable))


def _write(path: Path, text: str) -> float:
    """Rename a new config into place; the time just after the rename."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    os.replace(temporary, path)
    return time.time()


def _client(port: int, stop: threading.Event, answers: list) -> None:
    client = RestClient(port)
    while not stop.is_set():
        began = time.perf_counter()
        status, headers, _ = client.call("POST", PATH, MLP_BODY)
        version = headers.get("x-model-version")
        answers.append((time.time(), time.perf_counter() - began, status,
                        int(version) if version else None))
    client.close()


def rollback_run(moves: int, pause: float, tmp: Path) -> dict:
    root = tmp / "rollback"
    seed = start("bench.publisher", "--export-dir", root / "mlp", "--versions", 2, "--interval",
                 0, "--model", "mlp", "--kind", "savedmodel")
    assert seed.wait(timeout=300) == 0, seed.stderr
    base, config = root / "mlp" / "savedmodels", root / "models.config"
    _write(config, _config(base, 2))
    rest, grpc = free_ports(2)
    server = start("consumer.model_server", f"--model_config_file={config}",
                   "--model_config_file_poll_wait_seconds=60", f"--rest_api_port={rest}",
                   f"--port={grpc}", "--work_dir", root / "work")
    stop, per_client = threading.Event(), [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=_client, args=(rest, stop, answers))
               for answers in per_client]
    moved = []  # (time of the rename, the version stable names from then on)
    try:
        for step in (1, 2):
            server.wait_seen(lambda e, s=step: e["event"] == "model_loaded" and e["step"] == s)
        for thread in threads:
            thread.start()
        time.sleep(pause * 4)  # before any move: the baseline
        quiet_until = time.time()
        for move in range(moves):
            target = 1 if move % 2 == 0 else 2
            renamed = _write(config, _config(base, target))
            reloaded = server.wait_for(lambda e: e["event"] == "config_reloaded", timeout=30)
            moved.append((renamed, event_time(reloaded), target))
            time.sleep(pause)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        code = server.terminate()
    assert code == 0, server.stderr[-2000:]
    answers = sorted((a for per in per_client for a in per), key=lambda a: a[0])
    quiet = [latency for at, latency, status, _ in answers if at <= quiet_until and status == 200]
    moving = [latency for at, latency, status, _ in answers if at > quiet_until and status == 200]
    to_first = []
    for (at, _, target), after in zip(moved, moved[1:] + [(float("inf"),) * 2 + (None,)]):
        first = next((a[0] for a in answers if at <= a[0] < after[0] and a[3] == target), None)
        if first is not None:
            to_first.append(first - at)
    return {"moves": moves, "answered": len(answers),
            "failed": sum(1 for a in answers if a[2] != 200),
            "wrong": _wrong_answers(answers, moved),
            "to_first_p50": percentile(to_first, 0.5) if to_first else float("nan"),
            "to_first_max": max(to_first) if to_first else float("nan"),
            "moves_seen": len(to_first),
            "quiet_p99": percentile(quiet, 0.99), "moving_p99": percentile(moving, 0.99)}


def _wrong_answers(answers: list, moved: list) -> int:
    """Answers from a version the label cannot have named while the request was in flight. A
    move takes effect somewhere between the config's rename and the server's
    ``config_reloaded``, so around each move either version may answer."""
    named, since = [], 0.0  # (from, until, version): when a version may be the one named
    for version, (renamed, _, _), (_, applied, _) in zip(
            [2] + [target for _, _, target in moved], [(since, None, None)] + moved,
            moved + [(None, float("inf"), None)]):
        named.append((renamed, applied, version))
    wrong = 0
    for at, latency, status, version in answers:
        if status == 200:
            sent = at - latency
            wrong += version not in {v for start, end, v in named if start <= at and sent <= end}
    return wrong


def rollback_row(run: dict) -> tuple:
    ratio = run["moving_p99"] / run["quiet_p99"]
    return (f"Rollback: stable moved {run['moves']} times under load (config file)",
            f"first answer from the version it names: p50 {ms(run['to_first_p50'])}, max "
            f"{ms(run['to_first_max'])} after the rename; {run['failed']} failed and "
            f"{run['wrong']} from a version it did not name, of {run['answered']:,}",
            f"p99 {ratio:.2f}x before any move", "0 failed, 0 wrong, p99 <= 1.5x",
            run["failed"] == 0 and run["wrong"] == 0 and ratio <= 1.5)


if __name__ == "__main__":  # a run of its own
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        moves = int(sys.argv[1]) if len(sys.argv) > 1 else 20
        print(json.dumps(rollback_run(moves, 0.25, Path(tmp)), indent=1))
