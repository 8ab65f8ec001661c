"""The one place that imports TensorFlow, so every process sets the same environment first.

oneDNN is switched off: its fused kernels make float results depend on thread timing, and we
want a rerun with the same seed to give the same numbers. It also silences the C++ banner that
would otherwise land on stderr before our structured logs are configured.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1

__all__ = ["tf", "v1"]
