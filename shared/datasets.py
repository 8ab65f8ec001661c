"""The dataset catalog: named data, and how each dataset is scored.

An export names its dataset in the ``dataset`` collection as JSON, e.g.
``{"name": "linear", "seed": 0}``. Both processes rebuild the same arrays from that name, so the
consumer never needs the producer's code to evaluate or keep training. The built-in datasets are
generated from their seed; ``npz`` reads a user's arrays from a file inside the export dir, given
by a path relative to it, so the data travels with the export when it is moved or copied.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

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
    files: tuple = ()  # data files it reads, relative to the export dir


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


NPZ_ARRAYS = ("train_features", "train_labels", "eval_features", "eval_labels")
MAX_FILE_BYTES = 256 * 2**20  # an npz file, and the arrays it holds once unpacked


def _npz(root: Path | None, path: str, task: str, batch_size: int = 32) -> Dataset:
    """A user's arrays from ``<export-dir>/<path>``: ``train_features``, ``train_labels``,
    ``eval_features``, ``eval_labels`` and, for a classifier, ``class_names``. Training batches
    are ``batch_size`` rows of the training split, in order."""
    arrays = _read_npz(_data_file(root, path), task)
    features, labels = arrays["train_features"], arrays["train_labels"]
    batches = [(features[i:i + batch_size], labels[i:i + batch_size])
               for i in range(0, len(features), batch_size)]
    names = tuple(str(n) for n in arrays["class_names"]) if task == "classification" else ()
    return Dataset("npz", {"path": path, "task": task, "batch_size": batch_size}, task, batches,
                   (arrays["eval_features"], arrays["eval_labels"]), names, files=(path,))


def _data_file(root: Path | None, path: str) -> Path:
    if root is None:
        raise DatasetError("dataset 'npz' reads a file relative to its export dir; none given")
    relative = Path(path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise DatasetError(f"dataset 'npz': path {path!r} must be relative, inside the export dir")
    file = Path(root) / relative
    if file.is_symlink() or not file.resolve().is_relative_to(Path(root).resolve()):
        raise DatasetError(f"dataset 'npz': {file} is a symlink or lies outside the export dir")
    if not file.is_file():
        raise DatasetError(f"dataset 'npz': data file {file} is missing")
    if file.stat().st_size > MAX_FILE_BYTES:
        raise DatasetError(f"dataset 'npz': {file} is over {MAX_FILE_BYTES >> 20} MiB")
    return file


def _read_npz(file: Path, task: str) -> dict[str, np.ndarray]:
    """The arrays, checked: sizes from the zip directory before anything is unpacked (a
    compressed file could expand to anything), then names, dtypes and shapes."""
    try:
        with zipfile.ZipFile(file) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
        if unpacked > MAX_FILE_BYTES:
            raise DatasetError(f"dataset 'npz': {file} unpacks to {unpacked >> 20} MiB, over "
                               f"{MAX_FILE_BYTES >> 20} MiB")
        with np.load(file, allow_pickle=False) as npz:
            wanted = NPZ_ARRAYS + (("class_names",) if task == "classification" else ())
            missing = [name for name in wanted if name not in npz.files]
            if missing:
                raise DatasetError(f"dataset 'npz': {file} lacks {', '.join(missing)}")
            arrays = {name: npz[name] for name in wanted}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DatasetError(f"dataset 'npz': {file} is not a readable .npz: {err}") from None
    _check_arrays(arrays, task, file)
    return arrays


def _check_arrays(arrays: dict[str, np.ndarray], task: str, file: Path) -> None:
    def bad(message: str) -> DatasetError:
        return DatasetError(f"dataset 'npz': {file}: {message}")

    for split in ("train", "eval"):
        features, labels = arrays[f"{split}_features"], arrays[f"{split}_labels"]
        if features.ndim != 2 or features.dtype.kind != "f" or len(features) == 0:
            raise bad(f"{split}_features must be a non-empty 2-D float array, got "
                      f"{features.dtype} {features.shape}")
        if len(labels) != len(features):
            raise bad(f"{split}_labels has {len(labels)} rows for {len(features)} features")
        if task == "classification" and (labels.ndim != 1 or labels.dtype.kind not in "iu"):
            raise bad(f"{split}_labels must be 1-D integers, got {labels.dtype} {labels.shape}")
        if task == "regression" and labels.dtype.kind != "f":
            raise bad(f"{split}_labels must be floats, got {labels.dtype}")
    if arrays["train_features"].shape[1] != arrays["eval_features"].shape[1]:
        raise bad("train_features and eval_features differ in their number of columns")
    if task == "classification":
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind != "U" or len(names) < 2:
            raise bad(f"class_names must be 2 or more strings, got {names.dtype} {names.shape}")
        for split in ("train", "eval"):
            labels = arrays[f"{split}_labels"]
            if labels.min() < 0 or labels.max() >= len(names):
                raise bad(f"{split}_labels must lie in 0..{len(names) - 1}")


CATALOG = {"linear": _linear, "random_classes": _random_classes, "npz": _npz}
NEEDS_ROOT = {"npz"}  # builders that read files relative to the export dir

# The parameters an export may ask for, checked before anything is allocated: an export is input
# from another process, and a spec asking for millions of batches must be refused, not built.
# Numbers are (types, low, high); strings are (str, allowed values or None for any).
_INT, _FLOAT = (int,), (int, float)
_SEED = (_INT, 0, 2**63 - 1)
BOUNDS = {
    "linear": {"seed": _SEED, "size": (_INT, 1, 10_000_000), "noise": (_FLOAT, 0.0, 1e6)},
    "random_classes": {"seed": _SEED, "num_batches": (_INT, 1, 1_000_000),
                       "batch_size": (_INT, 1, 1_000_000), "num_features": (_INT, 1, 1_000_000),
                       "num_classes": (_INT, 2, 100_000)},
    "npz": {"path": (str, None), "task": (str, {"classification", "regression"}),
            "batch_size": (_INT, 1, 1_000_000)},
}
REQUIRED = {"npz": {"path", "task"}}
MAX_VALUES = 2**25  # numbers a generated dataset may hold in all: 128 MiB of float32


def _values(name: str, params: dict) -> int:
    """How many numbers a generated dataset would allocate, from its parameters alone."""
    if name == "linear":
        return 4 * params.get("size", 100)  # x and y, for training and evaluation
    if name == "random_classes":
        return (params.get("num_batches", 50) * params.get("batch_size", 32)
                * (params.get("num_features", 28) + 1))
    return 0  # a file's size is checked when it is read


def check(name: str, params: dict) -> None:
    """Raise DatasetError unless every parameter is known, of its type and within its bounds,
    and the whole stays under MAX_VALUES."""
    bounds = BOUNDS[name]
    missing = REQUIRED.get(name, set()) - set(params)
    if missing:
        raise DatasetError(f"dataset {name!r} needs {', '.join(sorted(missing))}")
    for key, value in params.items():
        if key not in bounds:
            raise DatasetError(f"dataset {name!r} has no parameter {key!r}; it takes "
                               f"{sorted(bounds)}")
        if bounds[key][0] is str:
            allowed = bounds[key][1]
            if not isinstance(value, str) or (allowed is not None and value not in allowed):
                raise DatasetError(f"dataset {name!r}: {key}={value!r} must be "
                                   + (f"one of {sorted(allowed)}" if allowed else "a string"))
            continue
        types, low, high = bounds[key]
        if isinstance(value, bool) or not isinstance(value, types) or not low <= value <= high:
            raise DatasetError(f"dataset {name!r}: {key}={value!r} is outside {low}..{high}")
    values = _values(name, params)
    if values > MAX_VALUES:
        raise DatasetError(f"dataset {name!r} would hold {values:,} values, over the limit of "
                           f"{MAX_VALUES:,}")


def parse_spec(text: str) -> dict:
    """A spec given as JSON text (a command line's), checked without building anything."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"dataset spec is not JSON: {err}") from None
    return _checked(spec)


def _checked(spec: object) -> dict:
    """``spec`` itself, once it names a dataset of the catalog with parameters in range."""
    if not isinstance(spec, dict) or spec.get("name") not in CATALOG:
        raise DatasetError(f"unknown dataset {spec!r}; the catalog has {sorted(CATALOG)}")
    check(spec["name"], {k: v for k, v in spec.items() if k != "name"})
    return spec


def spec_argument(text: str) -> dict:
    """``parse_spec`` as a command-line type: its error is the one line the user sees."""
    import argparse

    try:
        return parse_spec(text)
    except DatasetError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def load(spec: dict | bytes | str, root: Path | None = None) -> Dataset:
    """Build the dataset a spec names: a dict, or its JSON as stored in the ``dataset``
    collection. ``root`` is the export dir, where file-backed datasets find their data."""
    spec = parse_spec(spec) if isinstance(spec, (bytes, str)) else _checked(spec)
    params = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] in NEEDS_ROOT:
        return CATALOG[spec["name"]](root, **params)
    return CATALOG[spec["name"]](**params)
