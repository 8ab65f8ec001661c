import threading
from pathlib import Path

import pytest
import structlog

from tests.helpers import REPO


def train(export_dir: Path, model: str, steps: int, **overrides):
    """Run the producer's loop in this process (TensorFlow is imported once per test session)."""
    from producer import train as producer_train
    from shared import commit

    commit.claim(export_dir, model)  # as the producer's main does, before it trains
    config = producer_train.Config(
        model=model, export_dir=Path(export_dir), steps=steps,
        checkpoint_every=overrides.pop("checkpoint_every", 100),
        export_every=overrides.pop("export_every", 500),
        keep_checkpoints=overrides.pop("keep_checkpoints", 5),
        keep_checkpoint_every_hours=overrides.pop("keep_checkpoint_every_hours", None),
        keep_exports=overrides.pop("keep_exports", 5), seed=overrides.pop("seed", 0),
        log_every_epochs=overrides.pop("log_every_epochs", 1))
    assert not overrides, overrides
    return producer_train.run(config, threading.Event())


class Trained:
    def __init__(self, root: Path, events: list[dict]):
        self.root, self.events = root, events

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]


def _trained(root: Path, model: str, steps: int, **overrides) -> Trained:
    with structlog.testing.capture_logs() as events:
        train(root, model, steps, **overrides)
    return Trained(root, events)


@pytest.fixture(scope="session", autouse=True)
def fork_servers():
    """The fork servers ``tests.helpers.warm`` starts, stopped at the session's end."""
    yield
    from tests.helpers import close_forks

    close_forks()


@pytest.fixture(autouse=True)
def no_survivors():
    """A test that fails before it stops its processes leaves none behind to load the machine
    (module-scoped servers are stopped by their own fixtures, which run before this)."""
    from harness.processes import Process

    before = len(Process.started)
    yield
    Process.kill_survivors(since=before)


@pytest.fixture(scope="session")
def linear_export(tmp_path_factory) -> Trained:
    """A default linear run: 2000 steps, checkpoints every 100, exports every 500."""
    return _trained(tmp_path_factory.mktemp("linear"), "linear", 2000, log_every_epochs=100)


@pytest.fixture(scope="session")
def mlp_export(tmp_path_factory) -> Trained:
    """A default mlp run as in seed 002: 200 epochs of 50 batches."""
    return _trained(tmp_path_factory.mktemp("mlp"), "mlp", 10000, checkpoint_every=1000,
                    export_every=5000, log_every_epochs=100)


assert REPO.is_dir()
