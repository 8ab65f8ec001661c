"""Closed-loop HTTP load from ``wrk``, a native load generator, so that the client does not eat
the server's share of the CPU as a Python client would. One JSON line per run comes from the
script's ``done`` hook: requests, duration, non-2xx answers, socket errors, latency percentiles.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

_SCRIPT = """
wrk.method = "POST"
local f = io.open("%(body)s", "rb")
wrk.body = f:read("*all")
f:close()
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %%d, "duration_us": %%d, "non2xx": %%d, "errors": %%d, ' ..
    '"p50_us": %%d, "p99_us": %%d, "max_us": %%d}\\n', summary.requests, summary.duration,
    e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(50),
    latency:percentile(99), latency.max))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def post(url: str, body: bytes, *, connections: int, seconds: float, threads: int = 1,
         headers: dict[str, str] | None = None) -> dict:
    """POST ``body`` (any bytes: wrk reads it from a file) to ``url`` from ``connections``
    keep-alive connections for ``seconds``, as JSON unless ``headers`` say otherwise.
    Returns requests/s, p50 and p99 (seconds), and the count of non-2xx answers and errors."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    with tempfile.TemporaryDirectory() as tmp:
        data, script = Path(tmp) / "body", Path(tmp) / "post.lua"
        data.write_bytes(body)
        script.write_text(_SCRIPT % {"body": data, "headers": "\n".join(
            f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items())})
        result = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
             "--timeout", "10s", "-s", str(script), url],
            capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr.strip()[-500:]}")
    line = next(json.loads(out) for out in result.stdout.splitlines() if out.startswith("{"))
    seconds_run = line["duration_us"] / 1e6
    return {"requests_per_s": line["requests"] / seconds_run, "requests": line["requests"],
            "p50": line["p50_us"] / 1e6, "p99": line["p99_us"] / 1e6, "max": line["max_us"] / 1e6,
            "non2xx": line["non2xx"], "errors": line["errors"],
            "ok_per_s": (line["requests"] - line["non2xx"]) / seconds_run}
