"""Which task of a TensorFlow cluster this process is: from ``--cluster``/``--job``/``--task``,
or from the ``TF_CONFIG`` environment variable, TensorFlow's own convention, when the flags are
absent. Pure Python, so bad input fails in one line before TensorFlow loads.

The cluster is parameter servers and workers: ``{"ps": ["host:port"], "worker": ["host:port",
...]}``. Worker 0 is the chief: it alone initializes or restores the variables, and publishes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

JOBS = ("ps", "worker")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}\Z")


class ClusterError(Exception):
    """The cluster spec or this task's place in it is bad input: exit 2."""


class ClusterFailure(Exception):
    """The cluster cannot go on: a task never came up, or was lost. One line, exit 1."""


@dataclass(frozen=True)
class Role:
    cluster: dict[str, list[str]]
    job: str  # "ps" or "worker"
    task: int

    @property
    def name(self) -> str:
        return f"{self.job}/{self.task}"

    @property
    def is_chief(self) -> bool:
        return self.job == "worker" and self.task == 0

    @property
    def address(self) -> str:
        return self.cluster[self.job][self.task]


def resolve(cluster: str | None, job: str | None, task: int | None,
            environ: dict | None = None) -> Role | None:
    """This process's role, or None when it trains alone (no flags and no ``TF_CONFIG``)."""
    environ = os.environ if environ is None else environ
    if cluster is None and job is None and task is None:
        return _from_tf_config(environ.get("TF_CONFIG"))
    if cluster is None:
        raise ClusterError("--job and --task need --cluster (or TF_CONFIG, without the flags)")
    if job is None:
        raise ClusterError("--cluster needs --job ps or --job worker")
    return _role(_spec(_read(cluster)), job, 0 if task is None else task)


def _read(cluster: str) -> object:
    """``--cluster`` is JSON, or the path of a JSON file."""
    text = cluster
    if not cluster.lstrip().startswith("{"):
        try:
            text = Path(cluster).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ClusterError(f"--cluster {cluster!r} is neither JSON nor a readable file: "
                               f"{getattr(err, 'strerror', None) or err}") from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise ClusterError(f"the cluster spec is not JSON: {err}") from None


def _spec(value: object) -> dict[str, list[str]]:
    if not isinstance(value, dict) or set(value) != set(JOBS):
        raise ClusterError('the cluster spec must be {"ps": [...], "worker": [...]}, got '
                           f"{json.dumps(value)[:120]}")
    for job in JOBS:
        addresses = value[job]
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and _ADDRESS.match(a) for a in addresses)):
            raise ClusterError(f"cluster job {job!r} must list one or more \"host:port\" "
                               f"addresses, got {json.dumps(addresses)[:120]}")
        for address in addresses:
            _check_port(job, address)
    everyone = value["ps"] + value["worker"]
    if len(set(everyone)) != len(everyone):
        raise ClusterError("the cluster spec lists an address twice")
    return {job: list(value[job]) for job in JOBS}


def _check_port(job: str, address: str) -> None:
    """A task's port must be one every other task can dial: TF serves port 0, or one past 65535,
    on a port of the kernel's choosing, and the others would wait for it in vain."""
    port = int(address.rsplit(":", 1)[1])
    if not 1 <= port <= 65535:
        raise ClusterError(f"cluster job {job!r} address {address!r} has port {port}, outside "
                           "1..65535")


def _role(spec: dict[str, list[str]], job: str, task: int) -> Role:
    if job not in JOBS:
        raise ClusterError(f"job {job!r} is not one of {', '.join(JOBS)} (worker 0 is the chief)")
    if not 0 <= task < len(spec[job]):
        raise ClusterError(f"task {task} is outside job {job!r}, which has tasks "
                           f"0..{len(spec[job]) - 1}")
    return Role(spec, job, task)


def _from_tf_config(text: str | None) -> Role | None:
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError as err:
        raise ClusterError(f"TF_CONFIG is not JSON: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), dict):
        raise ClusterError('TF_CONFIG must be {"cluster": {...}, "task": {"type": ..., '
                           '"index": N}}')
    task = config["task"]
    if not isinstance(task.get("index", 0), int) or isinstance(task.get("index"), bool):
        raise ClusterError(f"TF_CONFIG's task index must be an integer, got {task.get('index')!r}")
    return _role(_spec(config.get("cluster")), task.get("type"), task.get("index", 0))
