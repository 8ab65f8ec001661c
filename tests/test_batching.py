"""Server-side batching (``--enable_batching``, ``--batching_parameters_file``) on a real server
with concurrent real clients: each answer is the one its own input gets alone, a batch never
mixes versions, a full queue answers 503, and padding behaves as TF Serving documents it."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.processes import free_ports
from harness.rest_client import RestClient
from tests import tfs_models
from tests.helpers import Process, run_warm, warm
from tests.test_model_server import loaded, swap_under_load


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
    server, rest = serve_probe(tmp_path, "max_batch_size { value: 1 }\n"
                                         "batch_timeout_micros { value: 500000 }\n"
                                         "max_enqueued_batches { value: 1 }\n"
                                         "num_batch_threads { value: 1 }\n")
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: RestClient(rest).predict("m", {"instances": [[1.0]]}),
                                range(6)))
    refused = [body for status, _, body in results if status == 503]
    assert refused and all("The batch scheduling queue to which this task was submitted is full"
                           in body["error"] for body in refused)
    assert any(status == 200 for status, _, _ in results)
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
