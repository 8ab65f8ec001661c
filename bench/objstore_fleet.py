"""The fleet bench: three model servers on one bucket (a moto S3 endpoint on 127.0.0.1), and
our writer publishing versions there. Per version: from its commit marker (the manifest's
``committed_at``, the writer's clock) to ``model_loaded`` on each server (its ``ready_at``): the
last server's figure is the fleet's. Beside it, the baseline in the same run: the same three
servers on a local base path, from the version's rename into place to ``model_loaded``.

    python -m bench.objstore_fleet [VERSIONS]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench import ms, percentile, start
from harness.processes import free_ports

SERVERS = 3
PAUSE = 1.5  # seconds between versions: each one is live everywhere before the next


def _servers(base: str, work: Path) -> list:
    servers = []
    for i in range(SERVERS):
        rest, grpc = free_ports(2)
        servers.append(start("consumer.model_server", f"--rest_api_port={rest}",
                             f"--port={grpc}", "--model_name=hp", f"--model_base_path={base}",
                             f"--work_dir={work / str(i)}"))
    for server in servers:
        server.wait_for(lambda e: e["event"] == "serving", timeout=120)
    return servers


def _live_at(server, step: int) -> float:
    return server.wait_seen(lambda e: e["event"] == "model_loaded" and e["step"] == step,
                            timeout=60)["ready_at"]


def _run(base: str, publish, versions: int, work: Path) -> list[list[float]]:
    """Per version, each server's seconds from the commit to live."""
    servers = _servers(base, work)
    delays = []
    try:
        for step in range(1, versions + 1):
            committed = publish(step)
            delays.append([_live_at(server, step) - committed for server in servers])
            time.sleep(PAUSE)
    finally:
        for server in servers:
            server.terminate()
    return delays


def fleet_run(versions: int, tmp: Path) -> dict:
    from shared import remote, store
    from shared.durable import fsync_dir
    from tests import objstore, tfs_models

    model = tfs_models.HalfPlusTwo()
    endpoint = objstore.start()
    previous = objstore.point_sdks_at(endpoint.url)
    try:
        bucket = objstore.make_bucket(endpoint.url)
        target = store.open_store(f"{bucket}/hp")

        def to_bucket(step: int) -> float:
            path = model.save(tmp / "staged" / str(step), b=float(step))
            return remote.publish(target, step, path).committed_at

        local = tmp / "local"
        local.mkdir(parents=True)

        def to_local(step: int) -> float:
            staging = tmp / "local-staging" / str(step)
            model.save(staging, b=float(step))
            os.rename(staging, local / str(step))  # one rename: TF Serving's local commit
            fsync_dir(local)
            return time.time()

        bucket_delays = _run(f"{bucket}/hp", to_bucket, versions, tmp / "work-bucket")
        local_delays = _run(str(local), to_local, versions, tmp / "work-local")
    finally:
        objstore.restore_env(previous)
        endpoint.stop()
        model.close()
    return {"versions": versions, "bucket": bucket_delays, "local": local_delays}


def _stats(delays: list[list[float]]) -> dict:
    fleet = [max(per) for per in delays]  # live on all three
    spread = [max(per) - min(per) for per in delays]
    return {"p50": percentile(fleet, 0.5), "p95": percentile(fleet, 0.95),
            "spread_p50": percentile(spread, 0.5), "spread_max": max(spread)}


def fleet_rows(run: dict) -> list[tuple]:
    bucket, local = _stats(run["bucket"]), _stats(run["local"])
    return [(f"Fleet: commit marker -> live on {SERVERS} servers on one bucket "
             f"({run['versions']} versions, 1 s poll)",
             f"p50 {ms(bucket['p50'])}, p95 {ms(bucket['p95'])}; spread between the first "
             f"and last server p50 {ms(bucket['spread_p50'])}, max {ms(bucket['spread_max'])}",
             f"{bucket['p50'] / local['p50']:.1f}x a local base path's rename -> live "
             f"(p50 {ms(local['p50'])}, p95 {ms(local['p95'])})",
             "p95 <= poll + 1 s", bucket["p95"] <= 2.0)]


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory() as directory:
        started = time.monotonic()
        result = fleet_run(count, Path(directory))
        rows = fleet_rows(result)
    print(json.dumps({"rows": rows, "seconds": round(time.monotonic() - started, 1)}, indent=1))
