"""A paced producer for the latency benchmarks: one version every ``--interval``.

The real producer trains as fast as it can, so its versions arrive in bursts that a consumer
rightly coalesces. Handoff latency is measured per version, so versions come at a steady pace
here, one training step apart. They are published by the producer's own code path
(``shared.publish``): checkpoints, or SavedModels with the ``serve`` graph. Each commit prints
``{"event": "committed", "step", "committed_at", "visible_at"}``: the commit time the writer
recorded (which the consumer reads too), and the time just after the rename that made the
version visible (the writer records its time before the last fsync, about 1 ms earlier here).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shared import commit, contract, datasets, layout, models
from shared.publish import Publisher
from shared.tfcompat import v1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export-dir", type=Path, required=True)
    parser.add_argument("--versions", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--model", choices=sorted(models.MODELS), default="linear")
    parser.add_argument("--kind", choices=("checkpoint", "savedmodel"), default="checkpoint")
    parser.add_argument("--first-step", type=int, default=1, help="the first version's number")
    args = parser.parse_args()

    spec = models.MODELS[args.model]
    dataset = datasets.load({"name": spec.dataset, "seed": 0})
    commit.claim(args.export_dir, spec.name)
    graph = models.build_training_graph(spec, dataset, seed=0)
    model = contract.read_training(graph)
    publisher = Publisher(args.export_dir, graph)

    def serving(assets: Path) -> models.ServingGraph:
        return models.build_serving_graph(spec, dataset, assets)

    with v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())
        due = time.monotonic()
        for step in range(args.first_step, args.first_step + args.versions):
            features, labels = dataset.batch(step)
            session.run(model.train_op, {model.features: features, model.labels: labels})
            due += args.interval
            time.sleep(max(0.0, due - time.monotonic()))
            if args.kind == "checkpoint":
                publisher.save_checkpoint(session, step)
            else:
                publisher.export_savedmodel(session, step, serving=serving)
            committed_at = layout.versions(args.export_dir, args.kind)[-1].committed_at
            print(json.dumps({"event": "committed", "step": step, "committed_at": committed_at,
                              "visible_at": publisher.visible_at}), flush=True)


if __name__ == "__main__":
    main()
