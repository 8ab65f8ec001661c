"""A wider MLP for the batching bench, saved as a plain TF1 SavedModel (no contract) in TF
Serving's layout, ``<base>/<version>``: 512 inputs, two hidden layers of 2048, 16 outputs.
Its weights (25 MB) make one example's ``Session.run`` cost a few milliseconds here (2.4 ms
measured on 2 cores) while 32 examples cost 6 ms: what batching is for.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from shared.tfcompat import tf, v1

FEATURES = 512
LAYERS = ((FEATURES, 2048), (2048, 2048), (2048, 16))


def save(path: Path, seed: int = 0) -> None:
    graph = tf.Graph()
    rng = np.random.default_rng(seed)
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, FEATURES], name="x")
        h = x
        for i, (fan_in, fan_out) in enumerate(LAYERS):
            weights = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
            h = tf.matmul(h, v1.get_variable(f"w{i}", initializer=weights))
            if i < len(LAYERS) - 1:
                h = tf.nn.relu(h)
        y = tf.identity(h, name="y")
        signature = v1.saved_model.signature_def_utils.predict_signature_def({"x": x}, {"y": y})
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, ["serve"],
                                                 signature_def_map={"serving_default": signature})
            builder.save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", type=Path, required=True, help="the version dir to write")
    save(parser.parse_args().path)


if __name__ == "__main__":
    main()
