"""Each evaluation as TensorBoard scalars, at the version's global step, in ``<work-dir>/eval/``.

The tags are the training summaries' own (``loss``, ``accuracy``: the contract's metric names),
so ``make tensorboard`` overlays the eval curve on the producer's training curve, as Estimator's
``<model_dir>/eval/`` did.
"""

from __future__ import annotations

from pathlib import Path

from shared.tfcompat import tf

EVAL_DIR = "eval"


class EvalSummaries:
    """A TensorBoard event file for one consumer's evaluations, opened at the first one."""

    def __init__(self, work_dir: Path) -> None:
        self.dir = Path(work_dir) / EVAL_DIR
        self._writer = None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.dir))
        with self._writer.as_default():
            for tag, value in metrics.items():
                tf.summary.scalar(tag, value, step=step)
        self._writer.flush()  # a person watching TensorBoard sees the point now, not at exit

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
