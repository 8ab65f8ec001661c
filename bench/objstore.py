"""The object-store bench, against moto's S3 server on 127.0.0.1 (tests/objstore.py):

- the download of one version (``--mib``, 1 GiB by default, as 8 data shards, a sharded
  checkpoint's layout) with our ``shared.remote.fetch`` (parallel ranged reads, every file's
  sha256 checked, one rename into place) against boto3's own ``download_file`` of the same
  files into a directory (its default transfer: 8 MiB parts, 10 threads), best of two each,
  run alternately;
- the requests an idle model costs the store per hour at TF Serving's default 1 s poll: our
  reader's one conditional GET of the pointer per poll against one LIST per poll (what a
  reader does without our writer, and TF Serving's file-system poll on a bucket), counted at
  the server.

moto serves a ranged GET by reading the whole object and slicing it (moto/s3/responses.py,
``_handle_range_header``), so here a download's time grows with its number of ranged reads
times the object's size: fewer, larger parts win against moto for a reason of moto's own.
Both sides pay it; the figures are for this endpoint, not for S3.

``python -m bench.objstore [--mib N]`` prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

SHARDS = 8
POLL_SECONDS = 1.0  # TF Serving's --file_system_poll_wait_seconds default


def _write_version(path: Path, mib: int) -> None:
    """A version's files: ``mib`` MiB of random variables in ``SHARDS`` shards, an index and a
    graph file (their contents do not matter to a download)."""
    variables = path / "variables"
    variables.mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    for shard in range(SHARDS):
        with open(variables / f"variables.data-{shard:05d}-of-{SHARDS:05d}", "wb") as handle:
            for _ in range(max(1, mib // SHARDS)):
                handle.write(chunk)
    (variables / "variables.index").write_bytes(os.urandom(4096))
    (path / "saved_model.pb").write_bytes(os.urandom(64 << 10))


def _timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def download_run(endpoint, tmp: Path, mib: int) -> dict:
    import boto3
    from boto3.s3.transfer import TransferConfig

    from shared import remote, store
    from tests.objstore import make_bucket

    bucket_url = make_bucket(endpoint.url, "bench")
    base = store.open_store(bucket_url)
    _write_version(tmp / "source", mib)
    remote.publish(base, 1, tmp / "source")
    version = remote.complete_versions(base)[0]
    s3 = boto3.client("s3", endpoint_url=endpoint.url)
    bucket = bucket_url[len("s3://"):]

    def ours() -> None:
        shutil.rmtree(tmp / "ours", ignore_errors=True)
        remote.fetch(base, version, tmp / "ours")

    def theirs() -> None:
        shutil.rmtree(tmp / "boto3", ignore_errors=True)
        for path in version.files:
            target = tmp / "boto3" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, f"1/{path}", str(target), Config=TransferConfig())

    times: dict[str, list[float]] = {"ours": [], "boto3": []}
    for _ in range(2):
        times["ours"].append(_timed(ours))
        times["boto3"].append(_timed(theirs))
    return {"bytes": version.size, "ours": min(times["ours"]), "boto3": min(times["boto3"]),
            "all": times}


def idle_run(endpoint, seconds: float = 3.0, interval: float = 0.05) -> dict:
    """Polls of an unchanged model, counted at the server: requests per poll, each way."""
    from shared import remote, store
    from tests.objstore import make_bucket

    base = store.open_store(make_bucket(endpoint.url, "idle"))
    source = Path(tempfile.mkdtemp())
    try:
        _write_version(source, SHARDS)
        remote.publish(base, 1, source)
    finally:
        shutil.rmtree(source)
    counts = {}
    etag = remote.read_pointer(base).etag
    memory = remote.ScanMemory()
    for name, poll in (("pointer", lambda: remote.read_pointer(base, etag)),
                       ("list", lambda: remote.complete_versions(base, memory))):
        poll()  # the first poll reads what is new; an idle model's polls come after
        endpoint.reset()
        polls, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            poll()
            polls += 1
            time.sleep(interval)
        counts[name] = endpoint.requests()["total"] / polls
    return {name: per_poll * 3600 / POLL_SECONDS for name, per_poll in counts.items()}


def objstore_run(mib: int = 1024) -> dict:
    from tests import objstore

    endpoint = objstore.start()
    previous = objstore.point_sdks_at(endpoint.url)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-objstore-") as tmp:
            return {"download": download_run(endpoint, Path(tmp), mib),
                    "idle": idle_run(endpoint)}
    finally:
        objstore.restore_env(previous)
        endpoint.stop()


def objstore_rows(run: dict) -> list[tuple]:
    """(benchmark, figure, against the baseline, target, met), as bench/__main__.py renders."""
    down, idle = run["download"], run["idle"]
    mib = down["bytes"] / (1 << 20)
    ratio = down["boto3"] / down["ours"]
    return [
        (f"Object store: fetch of a {mib:,.0f} MiB version from S3 (moto), sha256 checked",
         f"{down['ours']:.1f} s ({mib / down['ours']:.0f} MiB/s)",
         f"{ratio:.2f}x boto3 download_file ({down['boto3']:.1f} s)", ">= 1x", ratio >= 1),
        ("Object store: requests per hour for an idle model (1 s poll)",
         f"{idle['pointer']:,.0f} (one conditional GET of the pointer a poll)",
         f"{idle['list']:,.0f} with a LIST a poll; a GET is 1/12.5 of a LIST's S3 price",
         "<= 1 request a poll", idle["pointer"] <= 3600 * 1.01),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.objstore", description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    args = parser.parse_args()
    run = objstore_run(args.mib)
    print(json.dumps({"run": run, "rows": objstore_rows(run)}, indent=1))


if __name__ == "__main__":
    main()
