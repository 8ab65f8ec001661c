"""Restore throughput and checkpoint stall, on a contract graph with large variables.

The graph is the linear model plus non-trainable float32 ``ballast`` variables of the asked total
size, as one variable or several. It follows the contract, so the consumer's loader takes it
like any export. It runs with huge pages, as the consumer does. Prints one JSON line per
measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from consumer import hugepages, loader
from shared import commit, contract, datasets, layout
from shared.publish import Publisher
from shared.tfcompat import tf, v1

MIB = 2 ** 20


def build(size_mib: int, parts: int = 1) -> tuple[tf.Graph, contract.Training]:
    dataset = datasets.load({"name": "linear", "seed": 0})
    graph = tf.Graph()
    with graph.as_default():
        step = v1.train.get_or_create_global_step()
        with tf.name_scope("inputs"):
            x = v1.placeholder(tf.float64, [None, 1], name="features")
            y = v1.placeholder(tf.float64, [None, 1], name="labels")
        ballast = [v1.get_variable(f"ballast_{i}", [size_mib * MIB // 4 // parts], tf.float32,
                                   initializer=v1.zeros_initializer(), trainable=False)
                   for i in range(parts)]
        slope = v1.get_variable("slope", initializer=tf.constant(1.8, tf.float64))
        prediction = slope * x + tf.cast(ballast[0][0], tf.float64)
        with tf.name_scope("metrics"):
            loss = tf.reduce_mean(tf.square(prediction - y), name="loss")
        train_op = v1.train.GradientDescentOptimizer(0.01).minimize(loss, global_step=step)
        contract.attach_training(x, y, [loss], train_op, dataset)
    return graph, contract.read_training(graph)


def _raw_read_seconds(files: list[Path], fresh: bool = False) -> float:
    """Read ``files`` from the page cache: into one reused buffer, or (``fresh``) into a new
    buffer the size of each file, as a restore must (so page faults are counted too)."""
    reused = memoryview(bytearray(64 * MIB))
    started = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            if not fresh:
                while handle.readinto(reused):
                    pass
                continue
            view = memoryview(np.empty(path.stat().st_size, np.uint8))  # not zero-filled, like TF's
            while count := handle.readinto(view):
                view = view[count:]
    return time.perf_counter() - started


def _tf_read_seconds(prefix: Path, parts: int) -> float:
    """TF's RestoreV2 alone: the bundle read and its crc32c check, without the assign."""
    graph = tf.Graph()
    with graph.as_default():
        names = [f"ballast_{i}" for i in range(parts)]
        tensors = tf.raw_ops.RestoreV2(prefix=str(prefix), tensor_names=names,
                                       shape_and_slices=[""] * parts, dtypes=[tf.float32] * parts)
        size = tf.add_n([tf.size(t) for t in tensors])
        with v1.Session(graph=graph) as session:
            started = time.perf_counter()
            session.run(size)
            return time.perf_counter() - started


def restore_throughput(size_mib: int, repeats: int, parts: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-restore-") as tmp:
        return _restore_throughput(Path(tmp), size_mib, repeats, parts)


def _restore_throughput(root: Path, size_mib: int, repeats: int, parts: int) -> dict:
    commit.claim(root, "bench")
    graph, _ = build(size_mib, parts)
    with v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())
        prefix = Publisher(root, graph).save_checkpoint(session, 1)
    del graph
    files = sorted(prefix.parent.glob(f"{prefix.name}.*"))
    nbytes = sum(p.stat().st_size for p in files)
    _raw_read_seconds(files)  # fill the page cache: both sides then read from memory
    raw = statistics.median(_raw_read_seconds(files) for _ in range(repeats))
    raw_fresh = statistics.median(_raw_read_seconds(files, fresh=True) for _ in range(repeats))
    tf_read = statistics.median(_tf_read_seconds(prefix, parts) for _ in range(repeats))
    loads, restores = [], []
    for _ in range(repeats):
        loaded = loader.load(layout.latest_checkpoint(root), loader.TRAIN)
        loads.append(loaded.load_seconds)
        restores.append(loaded.phases["restore"])
        loaded.close()
        loaded.imported.retire()
    return {"bench": f"restore{parts}", "parts": parts, "mib": nbytes / MIB, "raw_read_s": raw,
            "raw_fresh_read_s": raw_fresh, "tf_read_s": tf_read,
            "load_s": statistics.median(loads), "restore_s": statistics.median(restores)}


def checkpoint_stall(size_mib: int, steps: int, every: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        return _checkpoint_stall(Path(tmp), size_mib, steps, every)


def _checkpoint_stall(root: Path, size_mib: int, steps: int, every: int) -> dict:
    commit.claim(root, "bench")
    graph, model = build(size_mib)
    dataset = model.dataset
    publisher = Publisher(root, graph)
    with v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())

        def train(save) -> tuple[float, list[float]]:
            saves = []
            started = time.perf_counter()
            for i in range(1, steps + 1):
                features, labels = dataset.batch(i)
                session.run(model.train_op, {model.features: features, model.labels: labels})
                if save and i % every == 0:
                    mark = time.perf_counter()
                    save(i)
                    saves.append(time.perf_counter() - mark)
            return time.perf_counter() - started, saves

        plain, _ = train(None)
        ours, our_saves = train(lambda i: publisher.save_checkpoint(session, i))
        vanilla_dir = root / "vanilla"
        vanilla_dir.mkdir()
        with graph.as_default():
            vanilla_saver = v1.train.Saver(max_to_keep=2)
            _, vanilla_saves = train(lambda i: vanilla_saver.save(
                session, str(vanilla_dir / "model.ckpt"), global_step=i))
    nbytes = sum(p.stat().st_size for p in root.glob("checkpoints/model.ckpt-*.data-*")) / \
        len(list(root.glob("checkpoints/model.ckpt-*.index")))
    return {"bench": "stall", "mib": nbytes / MIB, "steps": steps, "every": every,
            "steps_per_s_plain": steps / plain, "steps_per_s_checkpointing": steps / ours,
            "stall_s": (ours - plain) / len(our_saves), "save_s": statistics.median(our_saves),
            "vanilla_save_s": statistics.median(vanilla_saves),
            "save_mib_per_s": nbytes / MIB / statistics.median(our_saves)}


def main() -> None:
    hugepages.reexec_with_huge_pages(None)  # as the consumer runs: python -m, its own argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--restore-mib", type=int, default=1024)
    parser.add_argument("--stall-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stall-steps", type=int, default=400)
    parser.add_argument("--stall-every", type=int, default=100)
    args = parser.parse_args()
    for parts in (1, 4):
        print(json.dumps(restore_throughput(args.restore_mib, args.repeats, parts)), flush=True)
    print(json.dumps(checkpoint_stall(args.stall_mib, args.stall_steps, args.stall_every)),
          flush=True)


if __name__ == "__main__":
    main()
