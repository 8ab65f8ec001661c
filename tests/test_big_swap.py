"""A big model's swap (issue 31): its restore runs on the background thread at a lower CPU
priority, into a new session (no standby holding a third copy), and the version it replaced
closes off the releasing thread. Real TensorFlow, real exports; "big" is lowered to one byte
here (``graphs.BIG_BYTES``) so that a linear model takes the path in milliseconds."""

from __future__ import annotations

import os
import threading
import time

import pytest

from consumer import evaluate, graphs, loader
from shared import layout
from tests.helpers import LinearVersions, intercept_for


@pytest.fixture(scope="module")
def versioned(tmp_path_factory):
    root = tmp_path_factory.mktemp("big") / "exports"
    versions = LinearVersions(root, keep=0)
    for step in (1, 2):
        versions.publish(step, intercept_for(step))
    versions.close()
    return root


def _background_nice() -> int:
    thread = next(t for t in threading.enumerate() if t.name.startswith("big-restore"))
    return os.getpriority(os.PRIO_PROCESS, thread.native_id)


def _closed(session, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not session._closed and time.monotonic() < deadline:
        time.sleep(0.01)
    return session._closed


def test_a_big_models_versions_swap_into_new_sessions_at_background_priority(versioned,
                                                                            monkeypatch):
    """Each version after the first is restored (on the background thread, below the
    process's priority) into a session of its own, never into the one the version before held:
    restoring over used variables copies the table once more and holds three copies at the
    peak. Each scores exactly as a fresh import; the replaced one's session closes."""
    monkeypatch.setattr(graphs, "BIG_BYTES", 1)
    live = None
    for version in layout.versions(versioned, "savedmodel"):
        ready = loader.load(version, loader.SERVE, live.imported if live else None)
        assert ready.imported.big
        if live is not None:
            fresh = loader.load(version, loader.EVALUATE)
            assert not fresh.imported.big  # no requests to protect: restored where it is
            assert evaluate.evaluate(ready) == evaluate.evaluate(fresh), version.step
            fresh.close()
            fresh.imported.retire()
            assert ready.load == loader.WARM and ready.session is not live.session
            assert _background_nice() == min(19, os.getpriority(os.PRIO_PROCESS, 0)
                                             + graphs.BACKGROUND_NICE)
            live.close()  # its last holder lets it go: closed on the background thread
            assert _closed(live.session) and ready.imported._idle == []
        live = ready
    live.close()
    live.imported.retire()


def test_a_small_model_keeps_its_standby(versioned):
    """Below the size, the swap is the warm one of ``consumer.graphs``: restored into the
    standby session, which the previous version held."""
    first, second = layout.versions(versioned, "savedmodel")[:2]
    live = loader.load(first, loader.SERVE)
    assert not live.imported.big
    live.close()  # now the standby
    ready = loader.load(second, loader.SERVE, live.imported)
    assert ready.session is live.session and not ready.session._closed
    ready.close()
    ready.imported.retire()
