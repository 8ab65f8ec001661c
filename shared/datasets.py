"""The dataset catalog: named, deterministic-by-seed data, and how each dataset is scored.

An export names its dataset in the ``dataset`` collection as JSON, e.g.
``{"name": "linear", "seed": 0}``. Both processes rebuild the same arrays from that name, so the
consumer never needs the producer's code or files to evaluate or keep training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


class DatasetError(ValueError):
    """A dataset spec names nothing in the catalog, or has bad parameters."""


@dataclass(frozen=True)
class Dataset:
    name: str
    params: dict
    task: str  # "regression" or "classification"
    train_batches: list = field(repr=False)  # [(features, labels)], one per step of an epoch
    eval_split: tuple = field(repr=False)  # (features, labels)
    class_names: tuple = ()

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)

    @property
    def num_features(self) -> int:
        return self.train_batches[0][0].shape[1]

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "accuracy") if self.task == "classification" else ("loss",)

    @property
    def output_key(self) -> str:
        """The serving signature output that the catalog's scorer reads."""
        return "probabilities" if self.task == "classification" else "predictions"

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The training batch for global step ``step``: epochs cycle through the same batches."""
        return self.train_batches[step % self.steps_per_epoch]

    def score(self, outputs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """The catalog's metrics from a serving output: the same means the training graph takes."""
        if self.task == "regression":
            return {"loss": float(np.mean(np.square(outputs - labels)))}
        probabilities = np.clip(outputs, 1e-12, 1.0)
        picked = probabilities[np.arange(len(labels)), labels]
        return {"loss": float(-np.mean(np.log(picked))),
                "accuracy": float(np.mean(np.argmax(outputs, axis=1) == labels))}

    def to_json(self) -> bytes:
        return json.dumps({"name": self.name, **self.params}, sort_keys=True).encode()


def _linear(seed: int = 0, size: int = 100, noise: float = 0.05) -> Dataset:
    """Points on y = 1.5 x - 3 with a little noise; one full batch is one epoch (seed 000)."""

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = rng.uniform(0.0, 10.0, size=(size, 1))
        return x, 1.5 * x - 3.0 + rng.normal(0.0, noise, size=(size, 1))

    return Dataset("linear", {"seed": seed, "size": size, "noise": noise}, "regression",
                   [draw(np.random.default_rng(seed))], draw(np.random.default_rng(seed + 1)))


def _random_classes(seed: int = 0, num_batches: int = 50, batch_size: int = 32,
                    num_features: int = 28, num_classes: int = 5) -> Dataset:
    """Uniform random inputs with random labels (seed 002): only memorization can fit them,
    so the evaluation split is the training set itself."""
    rng = np.random.default_rng(seed)
    inputs = rng.random((num_batches, batch_size, num_features), dtype=np.float32)
    labels = rng.integers(0, num_classes, size=(num_batches, batch_size), dtype=np.int32)
    params = {"seed": seed, "num_batches": num_batches, "batch_size": batch_size,
              "num_features": num_features, "num_classes": num_classes}
    return Dataset("random_classes", params, "classification",
                   list(zip(inputs, labels)),
                   (inputs.reshape(-1, num_features), labels.reshape(-1)),
                   tuple(f"class_{i}" for i in range(num_classes)))


CATALOG = {"linear": _linear, "random_classes": _random_classes}

# The parameters an export may ask for, checked before anything is allocated: an export is input
# from another process, and a spec asking for millions of batches must be refused, not built.
_INT, _FLOAT = (int,), (int, float)
_SEED = (_INT, 0, 2**63 - 1)
BOUNDS = {
    "linear": {"seed": _SEED, "size": (_INT, 1, 10_000_000), "noise": (_FLOAT, 0.0, 1e6)},
    "random_classes": {"seed": _SEED, "num_batches": (_INT, 1, 1_000_000),
                       "batch_size": (_INT, 1, 1_000_000), "num_features": (_INT, 1, 1_000_000),
                       "num_classes": (_INT, 2, 100_000)},
}
MAX_VALUES = 2**25  # numbers a dataset may hold in all: 128 MiB of float32


def _values(name: str, params: dict) -> int:
    """How many numbers the dataset would allocate, from its parameters alone."""
    if name == "linear":
        return 4 * params.get("size", 100)  # x and y, for training and evaluation
    return (params.get("num_batches", 50) * params.get("batch_size", 32)
            * (params.get("num_features", 28) + 1))


def check(name: str, params: dict) -> None:
    """Raise DatasetError unless every parameter is known, of its type and within its bounds,
    and the whole stays under MAX_VALUES."""
    bounds = BOUNDS[name]
    for key, value in params.items():
        if key not in bounds:
            raise DatasetError(f"dataset {name!r} has no parameter {key!r}; it takes "
                               f"{sorted(bounds)}")
        types, low, high = bounds[key]
        if isinstance(value, bool) or not isinstance(value, types) or not low <= value <= high:
            raise DatasetError(f"dataset {name!r}: {key}={value!r} is outside {low}..{high}")
    values = _values(name, params)
    if values > MAX_VALUES:
        raise DatasetError(f"dataset {name!r} would hold {values:,} values, over the limit of "
                           f"{MAX_VALUES:,}")


def load(spec: dict | bytes | str) -> Dataset:
    """Build the dataset a spec names: a dict, or its JSON as stored in the ``dataset`` collection."""
    if isinstance(spec, (bytes, str)):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as err:
            raise DatasetError(f"dataset spec is not JSON: {err}") from err
    if not isinstance(spec, dict) or spec.get("name") not in CATALOG:
        raise DatasetError(f"unknown dataset {spec!r}; the catalog has {sorted(CATALOG)}")
    params = {k: v for k, v in spec.items() if k != "name"}
    check(spec["name"], params)
    return CATALOG[spec["name"]](**params)
