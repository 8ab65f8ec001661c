"""TF's own continuous-evaluation loop, the latency baseline.

``tf.compat.v1.train.checkpoints_iterator`` sleeps 1 s between polls of the state file. Each
checkpoint it yields is imported with ``import_meta_graph`` and restored into a fresh graph and
session, then run once, the same work the consumer's loader does. It prints
``{"event": "model_loaded", "step", "ready_at"}`` for each.
"""

from __future__ import annotations

import argparse
import json
import time

from shared import contract, layout
from shared.tfcompat import tf, v1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export-dir", required=True)
    args = parser.parse_args()
    checkpoints = str(layout.checkpoints_dir(args.export_dir))
    print(json.dumps({"event": "watching"}), flush=True)
    for prefix in v1.train.checkpoints_iterator(checkpoints):
        graph = tf.Graph()
        with graph.as_default():
            saver = v1.train.import_meta_graph(f"{prefix}.meta", clear_devices=True)
            session = v1.Session(graph=graph)
            saver.restore(session, prefix)
            model = contract.read_training(graph)
            features, labels = model.dataset.eval_split
            session.run(model.metrics, {model.features: features[:1], model.labels: labels[:1]})
        print(json.dumps({"event": "model_loaded", "step": layout.checkpoint_step(prefix),
                          "ready_at": time.time()}), flush=True)
        session.close()


if __name__ == "__main__":
    main()
