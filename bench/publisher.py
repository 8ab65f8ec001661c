"""A paced producer for the latency benchmarks: one linear-model version every ``--interval``.

The real producer trains as fast as it can, so its versions arrive in bursts that a consumer
rightly coalesces. Handoff latency is measured per version, so versions come at a steady pace
here. They are published by the producer's own code path (``shared.publish``). Each commit
prints ``{"event": "committed", "step", "committed_at"}``, with the same ctime the consumer reads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shared import contract, datasets, layout, models
from shared.publish import Publisher
from shared.tfcompat import v1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export-dir", type=Path, required=True)
    parser.add_argument("--versions", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    args = parser.parse_args()

    spec = models.MODELS["linear"]
    dataset = datasets.load({"name": spec.dataset, "seed": 0})
    layout.claim(args.export_dir, spec.name)
    graph = models.build_training_graph(spec, dataset, seed=0)
    model = contract.read_training(graph)
    publisher = Publisher(args.export_dir, graph)
    with v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())
        due = time.monotonic()
        for step in range(1, args.versions + 1):
            features, labels = dataset.batch(step)
            session.run(model.train_op, {model.features: features, model.labels: labels})
            due += args.interval
            time.sleep(max(0.0, due - time.monotonic()))
            publisher.save_checkpoint(session, step)
            committed_at = layout.latest_checkpoint(args.export_dir).committed_at
            print(json.dumps({"event": "committed", "step": step, "committed_at": committed_at}),
                  flush=True)


if __name__ == "__main__":
    main()
