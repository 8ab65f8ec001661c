"""Signals as a shell delivers them to a real producer process."""

from __future__ import annotations

import signal

from tests.helpers import Process


def _ignore_sighup() -> None:
    """What ``nohup`` does before it executes the command."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_a_producer_started_under_nohup_ignores_sighup_and_stops_on_sigterm(tmp_path):
    producer = Process("producer", "--export-dir", tmp_path / "exports", "--steps", 10**9,
                       "--checkpoint-every", 50, "--export-every", 10**6,
                       preexec_fn=_ignore_sighup)
    try:
        producer.wait_for(lambda e: e["event"] == "checkpoint_saved")
        producer.popen.send_signal(signal.SIGHUP)  # the terminal it was started from closes
        # Two more checkpoints: a producer that took SIGHUP as a stop would have published its
        # last step once and exited.
        for _ in range(2):
            producer.wait_for(lambda e: e["event"] == "checkpoint_saved")
        assert producer.popen.poll() is None and not producer.named("training_finished")
        assert producer.terminate() == 0, producer.stderr  # SIGTERM still stops it cleanly
    finally:
        producer.kill()
    assert producer.named("training_finished")[-1]["reason"] == "signal"
