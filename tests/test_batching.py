"""Server-side batching (``--enable_batching``, ``--batching_parameters_file``) on a real server
with concurrent real clients: each answer is the one its own input gets alone, a batch never
mixes versions, a full queue answers 503 (each version and signature its own queue), a request
that cannot join its batch fails alone, and padding behaves as TF Serving documents it. In
process, on a real loaded version: queues do not outlive their versions, a batch holds one
``--max_inflight_requests`` place, and a closed batcher refuses at once."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from consumer import loader
from consumer.serving import batching
from consumer.serving.admission import Admission
from consumer.serving.errors import ServingError
from harness.processes import free_ports
from harness.rest_client import RestClient
from shared import layout
from tests import tfs_models
from tests.helpers import Process, run_warm, warm
from tests.test_model_server import config_file, loaded, swap_under_load


def start(base, tmp_path, parameters: str, *extra) -> tuple[Process, int]:
    (tmp_path / "batching.config").write_text(parameters)
    rest, port = free_ports(2)
    server = warm("consumer.model_server", f"--model_base_path={base}", "--model_name=m",
                     f"--rest_api_port={rest}", f"--port={port}", "--work_dir", tmp_path / "w",
                     "--enable_batching",
                     f"--batching_parameters_file={tmp_path / 'batching.config'}", *extra)
    server.wait_for(lambda e: e["event"] == "serving")
    return server, rest


def serve_probe(tmp_path, parameters: str) -> tuple[Process, int]:
    """A batching server on ``tfs_models.batch_probe``'s version 1, loaded."""
    base = tmp_path / "probe"
    base.mkdir()
    tfs_models.publish(base, 1, tfs_models.batch_probe)
    server, rest = start(base, tmp_path, parameters)
    loaded(server, base, 1)
    return server, rest


def metric(client: RestClient, name: str) -> float:
    text = client.call("GET", "/monitoring/prometheus/metrics")[2].decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M)[1])


def test_each_request_gets_its_own_answer_and_batches_never_mix_versions(tmp_path):
    base = tmp_path / "hp2"
    base.mkdir()
    versions = tfs_models.HalfPlusTwo()
    tfs_models.publish(base, 1, lambda p: versions.save(p, b=1.0))
    server, rest = start(base, tmp_path, "max_batch_size { value: 32 }\n"
                                         "batch_timeout_micros { value: 2000 }\n"
                                         "max_enqueued_batches { value: 100 }\n")
    loaded(server, base, 1)
    stop, answers = threading.Event(), [[] for _ in range(32)]

    def client(index: int) -> None:
        mine = RestClient(rest)
        value = float(index)
        while not stop.is_set():
            status, headers, body = mine.predict("m", {"instances": [[value], [value + 0.5]]})
            answers[index].append((status, int(headers.get("x-model-version", -1)), body))
        mine.close()

    swap_under_load(server, base, versions, range(2, 7),  # swaps while batches form
                    [threading.Thread(target=client, args=(i,)) for i in range(32)], stop)
    for index, seen in enumerate(answers):
        assert seen
        for status, version, body in seen:
            assert status == 200, body
            # its own rows, computed by the version its header names: never a neighbour's
            # rows, never another version's weights
            assert body["predictions"] == [[0.5 * index + version],
                                           [0.5 * (index + 0.5) + version]], (index, version)
    probe = RestClient(rest)
    requests, runs = metric(probe, "handoff_batched_requests_total"), metric(
        probe, "handoff_session_runs_total")
    probe.close()
    assert runs < 0.5 * requests, (runs, requests)  # batches formed
    assert server.terminate() == 0, server.stderr


def test_padding_to_allowed_sizes_and_variable_lengths(tmp_path):
    server, rest = serve_probe(tmp_path, "max_batch_size { value: 8 }\n"
                                         "batch_timeout_micros { value: 300000 }\n"
                                         "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n"
                                         "pad_variable_length_inputs: true\n")
    client = RestClient(rest)
    # alone (its batch runs at the timeout): 1 row padded to 4, 5 rows padded to 8
    assert client.predict("m", {"instances": [[1.0]]})[2]["predictions"] == [[5.0]]
    assert client.predict("m", {"instances": [[1.0]] * 5})[2]["predictions"] == [[9.0]] * 5
    # two requests of different widths in one batch (8 rows fill it): each padded with its own
    # first value up to the widest, and each gets its own rows back
    with ThreadPoolExecutor(2) as pool:
        narrow = pool.submit(RestClient(rest).predict, "m", {"instances": [[1.0, 2.0]] * 4})
        wide = pool.submit(RestClient(rest).predict, "m", {"instances": [[3.0, 4.0, 5.0]] * 4})
        assert narrow.result()[2]["predictions"] == [[9.0, 10.0, 9.0]] * 4
        assert wide.result()[2]["predictions"] == [[11.0, 12.0, 13.0]] * 4
    status, _, body = client.predict("m", {"instances": [[1.0]] * 9})
    assert status == 400 and "Task size 9 is larger than maximum input batch size 8" in \
        body["error"]
    client.close()
    assert server.terminate() == 0, server.stderr


def test_a_full_queue_answers_503_at_once(tmp_path):
    """TF Serving refuses a task that does not fit the open batch when ``max_enqueued_batches``
    batches are in its queue already (``Queue::Schedule``: ``batches_.size() >=
    max_enqueued_batches``, tensorflow_serving/batching/shared_batch_scheduler.h:533-542 before
    it moved to tensorflow/core/kernels/batching_util). One batch forming is a full queue of 1."""
    server, rest = serve_probe(tmp_path, "max_batch_size { value: 4 }\n"
                                         "batch_timeout_micros { value: 1000000 }\n"
                                         "max_enqueued_batches { value: 1 }\n"
                                         "num_batch_threads { value: 1 }\n")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(RestClient(rest).predict, "m", {"instances": [[1.0]] * 3})
        time.sleep(0.25)  # its batch is forming: 3 of 4 rows, for 1 s
        started = time.monotonic()
        status, _, body = RestClient(rest).predict("m", {"instances": [[1.0]] * 3})
        assert status == 503 and time.monotonic() - started < 0.6, (status, body)
        assert "The batch scheduling queue to which this task was submitted is full; currently " \
               "1 batches enqueued and max_enqueued_batches is 1" in body["error"]
        assert first.result()[2]["predictions"] == [[4.0]] * 3  # it ran in its own batch of 3
    assert server.terminate() == 0, server.stderr


def start_models(tmp_path, parameters: str, names: tuple[str, ...]) -> tuple[Process, int]:
    """A batching server of ``batch_probe`` models, each under its own name, loaded."""
    bases = {}
    for name in names:
        bases[name] = tmp_path / name
        bases[name].mkdir()
        tfs_models.publish(bases[name], 1, tfs_models.batch_probe)
    server, rest = start(bases[names[0]], tmp_path, parameters,
                         config_file(tmp_path / "models.config", bases))
    for base in bases.values():
        loaded(server, base, 1)
    return server, rest


def test_a_flooded_model_leaves_an_idle_one_answering(tmp_path):
    """Each version and signature has its own queue and its own ``max_enqueued_batches``: TF
    Serving adds one per signature of each version (servables/tensorflow/bundle_factory_util.cc
    :147-161, ``AddQueue``; batching/batching_session.cc:326-337). A flood that fills one model's
    queue leaves another's empty: the idle model answers 200 throughout."""
    server, rest = start_models(tmp_path, "max_batch_size { value: 4 }\n"
                                          "batch_timeout_micros { value: 200000 }\n"
                                          "max_enqueued_batches { value: 1 }\n"
                                          "num_batch_threads { value: 1 }\n", ("busy", "idle"))
    rows = {"instances": [[1.0]] * 3}  # 3 of 4 rows: a second one never fits the open batch
    stop, busy, idle = threading.Event(), [], []

    def flood() -> None:
        client = RestClient(rest)
        while not stop.is_set():
            busy.append(client.predict("busy", rows)[0])
        client.close()

    flooders = [threading.Thread(target=flood) for _ in range(8)]
    for thread in flooders:
        thread.start()
    client = RestClient(rest)
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            status, _, body = client.predict("idle", rows)
            idle.append(status)
            assert status == 200 and body["predictions"] == [[4.0]] * 3, (status, body)
    finally:
        stop.set()
        for thread in flooders:
            thread.join(timeout=30)
        client.close()
    assert len(idle) >= 3 and 503 in busy and 200 in busy, (idle, busy.count(503))
    assert server.terminate() == 0, server.stderr


@pytest.mark.parametrize("pad, bad, code", [
    # padding off: TF Serving's own check and text (batching_session.cc:536-545); it fails the
    # whole batch, we fail the request that differs
    ("false", [[1.0, 2.0, 3.0]], "Tensors with name 'x:0' from different tasks have different "
                                  "shapes and padding is turned off"),
    # padding on, another rank: TF Serving overruns its arrays (batching_util.cc:156-186, then
    # tensor::Concat); it fails alone with the same code
    ("true", [[[1.0, 2.0]]], "Tensors with name 'x:0' from different tasks have different ranks "
                             "(2 and 3), which padding cannot join"),
], ids=["shape_without_padding", "rank_with_padding"])
def test_a_request_that_cannot_join_its_batch_fails_alone(tmp_path, pad, bad, code):
    server, rest = serve_probe(tmp_path, "max_batch_size { value: 8 }\n"
                                         "batch_timeout_micros { value: 1000000 }\n"
                                         f"pad_variable_length_inputs: {pad}\n")
    good = {"instances": [[1.0, 2.0]]}
    with ThreadPoolExecutor(3) as pool:  # all three in one batch (it waits 1 s for more)
        answers = [pool.submit(RestClient(rest).predict, "m", body)
                   for body in (good, {"instances": bad}, good)]
        (s1, _, b1), (s2, _, b2), (s3, _, b3) = [a.result() for a in answers]
    assert (s1, s3) == (200, 200), (b1, b3)
    assert b1["predictions"] == b3["predictions"] == [[3.0, 4.0]]  # ran together: 2 rows
    assert s2 == 400 and code in b2["error"], b2
    if pad == "true":  # every request past rank 6 is refused before it is queued
        status, _, body = RestClient(rest).predict("m", {"instances": [[[[[[[1.0]]]]]]]})
        assert status == 400 and "Only tensors with rank from 1 to 6 can be padded." == \
            body["error"], body
    assert server.terminate() == 0, server.stderr


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8"),
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 4\n",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4"),
    ("max_batch_size: 8\n", "Invalid protobuf file"),
    # each batch thread is real: 100,000 of them was "can't start new thread", exit 1
    ("num_batch_threads { value: 100000 }\n", "num_batch_threads 100000 is over the limit"),
])
def test_bad_batching_parameters_exit_2_with_one_line(tmp_path, text, message):
    (tmp_path / "b.config").write_text(text)
    result = run_warm("consumer.model_server", f"--model_base_path={tmp_path}", "--enable_batching",
                 f"--batching_parameters_file={tmp_path / 'b.config'}", timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- in process: a real Batcher and Admission over a real loaded version -------------------------


@pytest.fixture
def probe(tmp_path):
    """``batch_probe`` loaded in this process; ``swap()`` gives the next version (a warm load of
    the same files, a new ``Loaded`` as a real swap makes) and closes the one it replaces."""
    tfs_models.publish(tmp_path, 1, tfs_models.batch_probe)
    version = layout.versions(tmp_path, "base")[0]
    versions = [loader.load(version, loader.SERVE)]

    def swap():
        versions[-1].close()
        versions.append(loader.load(version, loader.SERVE, current=versions[-1].imported))
        return versions[-1]
    yield versions[0], swap
    versions[-1].close()


def one_row(value: float = 1.0) -> dict:
    return {"x:0": np.full((1, 2), value, np.float32)}


def test_the_queue_of_a_version_swapped_away_is_dropped(probe):
    """300 swaps, each with a batch forming on the old version when the swap comes: the swap
    closes it (it runs at once, not at its 10 s timeout), and no queue outlives its batches."""
    first, swap = probe
    batcher = batching.Batcher(batching.Parameters(max_batch_size=8, batch_timeout_micros=10**7,
                                                   num_batch_threads=2))
    most, current, pool = 0, first, ThreadPoolExecutor(1)
    try:
        for _ in range(300):
            waiting = pool.submit(batcher.run, current, one_row(), ("y:0",))
            deadline = time.monotonic() + 5
            while batcher.queues == 0 and time.monotonic() < deadline:
                time.sleep(0.0005)
            old, current = current, swap()
            most = max(most, batcher.queues)
            batcher.close_version({id(old)})
            assert waiting.result(timeout=5)[0].tolist() == [[2.0, 2.0]]
        assert most == 1 and batcher.queues == 0
    finally:
        batcher.close()  # whatever failed, no request is left waiting
        pool.shutdown()


def test_a_batch_holds_one_place_so_batches_fill_past_max_inflight(probe):
    """``--max_inflight_requests`` with batching: a batch takes one place, its requests give
    theirs back once queued. 8 one-row requests under a bound of 2 still make one batch of 8,
    the places in use never pass 2, and every place comes back."""
    loaded, _ = probe
    places = Admission(2, max_wait=5.0)
    batcher = batching.Batcher(batching.Parameters(max_batch_size=8, batch_timeout_micros=2 * 10**6,
                                                   num_batch_threads=1))
    seen, stop = [], threading.Event()

    def request(_) -> list:
        places.enter()
        try:
            return batcher.run(loaded, one_row(), ("y:0",))[0].tolist()
        finally:
            places.leave()

    def watch() -> None:
        while not stop.is_set():
            seen.append(places.running)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(request, range(8)))
    stop.set()
    watcher.join()
    assert answers == [[[9.0, 9.0]]] * 8  # y = x + rows: all 8 in one batch, full before 2 s
    assert max(seen) <= 2 and places.running == 0, max(seen)
    batcher.close()


def test_after_close_a_run_fails_at_once_with_unavailable(probe):
    loaded, _ = probe
    batcher = batching.Batcher(batching.Parameters(num_batch_threads=1))
    assert batcher.run(loaded, one_row(), ("y:0",))[0].tolist() == [[2.0, 2.0]]
    batcher.close()
    outcome = []

    def late() -> None:  # a late handler, past the shutdown grace
        try:
            batcher.run(loaded, one_row(), ("y:0",))
        except ServingError as err:
            outcome.append(err.code)

    handler = threading.Thread(target=late, daemon=True)  # broken, it would wait for good
    handler.start()
    handler.join(timeout=2)
    assert outcome == ["UNAVAILABLE"]
