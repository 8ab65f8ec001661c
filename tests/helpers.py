"""Start real processes for tests, through the same runner the demo and the bench use."""

from __future__ import annotations

import subprocess

from shared import commit
from harness.processes import REPO, ForkServer, Process, command, env  # noqa: F401 - for tests


_forks: dict[str, ForkServer] = {}  # module -> its fork server, for this test session


def fork_server(module: str) -> ForkServer:
    """The test session's fork server for ``module``, started on first use."""
    if module not in _forks:
        _forks[module] = ForkServer(module)
    return _forks[module]


def warm(module: str, *args, **options) -> Process:
    """``python -m module`` as a real process forked warm from a server that imported
    TensorFlow once (per module, per test session): milliseconds, not 5 s, a start."""
    return Process(module, *args, server=fork_server(module), **options)


def run_warm(module: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``run``'s result, from a warm start (for the many bad-input cases of one program)."""
    process = warm(module, *args)
    code = process.wait(timeout)
    return subprocess.CompletedProcess(module, code, "", process.stderr)


def close_forks() -> None:
    for server in _forks.values():
        server.close()
    _forks.clear()


def run(module: str, *args, timeout: float = 300,
        preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run(command(module, *args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env(), preexec_fn=preexec_fn)


class LinearVersions:
    """Publishes linear-model SavedModels whose intercept encodes their step, so every response
    can be checked against the version its header names: prediction(x=0) == intercept(step)."""

    def __init__(self, root, keep: int = 5, dataset: dict | None = None) -> None:
        """``dataset``: the catalog spec its versions name (the linear model's own by default;
        an npz one's file must be inside ``root`` already)."""
        from shared import datasets, models
        from shared.publish import Publisher
        from shared.tfcompat import tf, v1

        commit.claim(root, "linear")
        self.spec = models.MODELS["linear"]
        self.dataset = datasets.load(dataset or {"name": "linear", "seed": 0}, root)
        self.graph = models.build_training_graph(self.spec, self.dataset, seed=0)
        self.publisher = Publisher(root, self.graph, keep_checkpoints=keep, keep_exports=keep)
        with self.graph.as_default():
            variables = {v.op.name.split("/")[-1]: v for v in v1.global_variables()}
            self.value = v1.placeholder(tf.float64, [])
            self.set_slope = variables["slope"].assign(self.value)
            self.set_intercept = variables["intercept"].assign(self.value)
            self.session = v1.Session(graph=self.graph)
            self.session.run(v1.global_variables_initializer())
        self.session.run(self.set_slope, {self.value: 1.5})

    def publish(self, step: int, intercept: float, checkpoint: bool = False,
                slope: float = 1.5) -> None:
        """A SavedModel ``step`` (and a checkpoint, if asked) whose intercept is ``intercept``."""
        from shared import models

        self.session.run(self.set_slope, {self.value: slope})
        self.session.run(self.set_intercept, {self.value: intercept})
        if checkpoint:
            self.publisher.save_checkpoint(self.session, step)
        self.publisher.export_savedmodel(
            self.session, step,
            serving=lambda assets: models.build_serving_graph(self.spec, self.dataset, assets))

    def close(self) -> None:
        self.session.close()


def intercept_for(step: int) -> float:
    """Closer to the true -3 with every step, so each version's loss improves on the last."""
    return -3.0 + 1.0 / step
