"""End to end: real producer and consumer processes on one directory, started as a user would."""

import shutil
import signal

from shared import layout
from tests.helpers import Process


def _broken(consumer: Process) -> list[dict]:
    """Versions refused as broken. Retention may also delete a version under a load: that is
    logged (``deleted_while_loading``) and harmless, as a newer version exists by then."""
    return [e for e in consumer.named("load_failed") if not e["deleted_while_loading"]]

def test_checkpoint_handoff_continues_training_where_the_producer_left_it(tmp_path):
    exports, work = tmp_path / "exports", tmp_path / "work"
    consumer = Process("consumer", "--export-dir", exports, "--work-dir", work, "--source",
                       "checkpoint", "--mode", "train", "--train-steps", "50",
                       "--until-step", "3000")
    producer = Process("producer", "--model", "mlp", "--export-dir", exports, "--steps", "3000",
                       "--checkpoint-every", "500", "--export-every", "1000")
    try:
        assert producer.wait() == 0, producer.stderr
        assert consumer.wait() == 0, consumer.stderr
    finally:
        producer.kill()
        consumer.kill()
    loaded = consumer.named("model_loaded")
    trained = consumer.named("trained")
    assert loaded[-1]["step"] == 3000 and loaded[-1]["source"] == "checkpoint"
    assert {"step", "source", "path", "load_seconds", "handoff_seconds"} <= set(loaded[-1])
    assert [t["start_step"] for t in trained] == [e["step"] for e in loaded]
    assert trained[-1]["end_step"] == 3050
    assert trained[-1]["accuracy"] > 0.26  # the producer's level (chance is 0.20)
    assert layout.latest_checkpoint(work).step == 3050
    assert layout.savedmodel_is_complete(layout.savedmodel_path(work, 3050))
    assert layout.latest_checkpoint(exports).step == 3000  # the producer's dir is untouched
    assert not _broken(consumer)


def test_savedmodel_handoff_refuses_a_partial_version_and_keeps_flowing(tmp_path):
    exports, work = tmp_path / "exports", tmp_path / "work"
    consumer = Process("consumer", "--export-dir", exports, "--work-dir", work,
                       "--until-step", "3000")
    consumer.wait_for(lambda e: e["event"] == "consumer_started")
    producer = Process("producer", "--export-dir", exports, "--steps", "3000",
                       "--export-every", "100", "--log-every", "1000")
    try:
        consumer.wait_for(lambda e: e["event"] == "model_loaded" and e["step"] >= 500)
        # A partial version: a saved_model.pb and no variables, given a number by one rename.
        source = layout.latest_savedmodel(exports).path
        partial = exports / "savedmodels" / ".tmp-planted"
        partial.mkdir()
        shutil.copy(source / "saved_model.pb", partial)
        partial.rename(exports / "savedmodels" / "2950")
        failed = consumer.wait_for(lambda e: e["event"] == "load_failed")
        assert failed["path"].endswith("/savedmodels/2950") and failed["error"]
        assert producer.wait() == 0, producer.stderr
        assert consumer.wait() == 0, consumer.stderr
    finally:
        producer.kill()
        consumer.kill()
    steps = [e["step"] for e in consumer.named("model_loaded")]
    assert steps[-1] == 3000 and steps == sorted(steps) and 2950 not in steps
    assert [e["step"] for e in consumer.named("evaluated")] == steps
    assert [e["step"] for e in _broken(consumer)] == [2950]
    assert len((work / "evaluations.jsonl").read_text().splitlines()) == len(steps)


def test_kill_9_of_the_producer_never_makes_the_consumer_load_a_broken_version(tmp_path):
    exports, work = tmp_path / "exports", tmp_path / "work"
    consumer = Process("consumer", "--export-dir", exports, "--work-dir", work, "--source",
                       "checkpoint")
    producer = Process("producer", "--model", "mlp", "--export-dir", exports, "--steps",
                       "10000000", "--checkpoint-every", "20", "--export-every", "40")
    try:
        consumer.wait_for(lambda e: e["event"] == "model_loaded")
        consumer.wait_for(lambda e: e["event"] == "model_loaded")
        producer.kill()
        producer.wait()
        # the consumer meets whatever the kill left behind, and ends on the newest commit
        newest = layout.latest_checkpoint(exports).step
        if newest not in [e["step"] for e in consumer.named("model_loaded")]:
            consumer.wait_for(lambda e: e["event"] == "model_loaded" and e["step"] == newest)
        consumer.popen.send_signal(signal.SIGHUP)  # a closed terminal: a clean stop, like TERM
        assert consumer.wait(timeout=30) == 0, consumer.stderr
    finally:
        producer.kill()
        consumer.kill()
    # retention may delete a version under a load (deleted_while_loading); nothing else fails
    assert _broken(consumer) == []
    assert consumer.named("consumer_stopped")
