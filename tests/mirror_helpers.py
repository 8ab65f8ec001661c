"""Helpers for the tests of model servers and consumers on a bucket (tests/test_objstore_serving.py)
and the fleet bench: versions uploaded by "another tool" (boto3, file by file, in any order,
stopped or truncated on purpose), and a client that asks every 50 ms and checks each answer
against the weights of the version it names."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from harness.rest_client import RestClient

SHARD = "variables/variables.data-00000-of-00001"


def files_of(version_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(version_dir)) for p in Path(version_dir).rglob("*")
                  if p.is_file())


def upload_other_tool(s3, bucket: str, prefix: str, step: int, version_dir: Path, *,
                      rng: random.Random, stop_after: int | None = None,
                      truncate_shard: bool = False) -> list[str]:
    """Upload ``version_dir`` as ``<prefix>/<step>/`` with boto3, file by file in a random
    order, as ``aws s3 sync`` might; ``stop_after`` files, if given (an upload killed there);
    the data shard cut to half its size, if asked. Returns the keys written, in order."""
    names = files_of(version_dir)
    rng.shuffle(names)
    if stop_after is not None:
        names = names[:stop_after]
    written = []
    for name in names:
        body = (Path(version_dir) / name).read_bytes()
        if truncate_shard and name == SHARD:
            body = body[:len(body) // 2]
        key = f"{prefix}/{step}/{name}" if prefix else f"{step}/{name}"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        written.append(key)
    return written


class Asker:
    """A client on its own thread asking ``model`` every ``every`` seconds; each answer must be
    200 with y = 0.5 * x + v for the version v its header names (``HalfPlusTwo`` with b = v).
    ``failures`` holds every request that failed, ``versions`` the versions seen in order."""

    def __init__(self, port: int, model: str, every: float = 0.05) -> None:
        self.port, self.model, self.every = port, model, every
        self.failures: list[str] = []
        self.versions: list[int] = []
        self.asked = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Asker":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for_version(self, version: int, timeout: float = 10.0) -> None:
        """Until an answer from ``version`` came back: a version live on the server may not
        have answered this client yet (its request in flight started on the old one)."""
        deadline = time.monotonic() + timeout
        while version not in self.versions:
            assert time.monotonic() < deadline, (version, self.versions)
            time.sleep(0.01)

    def _run(self) -> None:
        client = RestClient(self.port, timeout=10)
        x = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            self.asked += 1
            try:
                status, headers, body = client.predict(self.model, {"instances": [x]})
            except OSError as err:
                self.failures.append(f"connection: {err!r}")
            else:
                self._check(status, headers, body, x)
            x = x % 7 + 1.0
            self._stop.wait(max(0.0, self.every - (time.monotonic() - started)))
        client.close()

    def _check(self, status: int, headers: dict, body, x: float) -> None:
        if status != 200:
            self.failures.append(f"{status}: {str(body)[:200]}")
            return
        version = int(headers["x-model-version"])
        got = body["predictions"][0]
        if abs(got - (0.5 * x + version)) > 1e-4:
            self.failures.append(f"version {version} answered {got} for x={x}")
        if not self.versions or self.versions[-1] != version:
            self.versions.append(version)
