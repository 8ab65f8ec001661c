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

__all__ = ["tf", "v1", "cause"]

# Lines of a TF error that say where it happened, not what happened.
_WHERE = ("Graph execution error", "Detected at node", "Node:", "[[", "File ", "defined at")


def cause(error: BaseException) -> str:
    """The one line of an error that names its cause. TF's message often starts with "Graph
    execution error:" and says what went wrong lines below (``...variables.data-00000-of-00001;
    No such file or directory``): that line, not the first."""
    message = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(_WHERE)]
    return (telling or lines or [""])[0]
