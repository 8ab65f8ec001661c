"""Warm-up requests: a SavedModel's ``assets.extra/tf_serving_warmup_requests``, a TFRecord of
``PredictionLog`` protos (TF Serving's format), replayed on a version before it answers anything.

Each record runs as its RPC would (predict, classify, regress, multi-inference), on the loaded
version itself: no model name or version is resolved. It serves two ends: the version's first
real requests are not the slow ones, and, for a SavedModel that does not name a dataset of ours,
it is the gate's evidence. A record that fails, or an output that is NaN or infinite, refuses
the version, and the live version keeps answering.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from consumer.gate import Refused
from consumer.loader import Loaded
from consumer.serving import inference, protos
from consumer.serving.errors import ServingError
from shared import logs
from shared.tfcompat import tf, v1

from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402

log = logs.get("consumer")

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's limit


def replay(loaded: Loaded, iterations: int = 1) -> int:
    """Run ``loaded``'s warm-up records ``iterations`` times each; the number of records.
    Raises ``Refused`` with the first failure."""
    path = loaded.version.path / WARMUP_FILE
    if not path.is_file():
        return 0
    count = 0
    try:
        for record in v1.io.tf_record_iterator(str(path)):
            count += 1
            if count > MAX_RECORDS:
                raise Refused(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at "
                              f"{path}")
            entry = prediction_log_pb2.PredictionLog()
            try:
                entry.ParseFromString(record)
            except Exception:  # protobuf's DecodeError: the record is not a PredictionLog
                raise Refused(f"Failed to parse warmup record {count} from {path}") from None
            for _ in range(max(1, iterations)):
                _run(loaded, entry, count)
    except tf.errors.OpError as err:  # not a TFRecord, or a damaged one
        raise Refused(f"{err.message.strip().splitlines()[0]}. Please verify your warmup data "
                      "is in TFRecord format.") from None
    log.info("warmup_replayed", step=loaded.version.step, path=str(path), records=count,
             iterations=max(1, iterations))
    return count


def _run(loaded: Loaded, entry, index: int) -> None:
    kind = entry.WhichOneof("log_type")
    try:
        if kind == "predict_log":
            request = entry.predict_log.request
            inputs = {key: protos.to_array(proto) for key, proto in request.inputs.items()}
            outputs = inference.predict(loaded, request.model_spec.signature_name, inputs,
                                        tuple(request.output_filter))
            _check_finite(outputs, index)
        elif kind == "classify_log":
            request = entry.classify_log.request
            result = inference.classify(loaded, request.model_spec.signature_name,
                                        protos.serialized_examples(request.input))
            _check_finite({"scores": np.asarray(result.scores, np.float32)}, index)
        elif kind == "regress_log":
            request = entry.regress_log.request
            values = inference.regress(loaded, request.model_spec.signature_name,
                                       protos.serialized_examples(request.input))
            _check_finite({"outputs": values}, index)
        elif kind == "multi_inference_log":
            request = entry.multi_inference_log.request
            tasks = [inference.Task(t.model_spec.name, t.model_spec.signature_name,
                                    t.method_name) for t in request.tasks]
            inference.multi_inference(loaded, tasks, protos.serialized_examples(request.input))
        elif kind is not None:
            number = entry.DESCRIPTOR.fields_by_name[kind].number
            raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup: {number}")
    except ServingError as err:
        raise Refused(f"warm-up request {index} ({kind}) failed: {err.code}: {err.message}") \
            from None


def _check_finite(outputs: dict[str, np.ndarray], index: int) -> None:
    for key, array in outputs.items():
        array = np.asarray(array)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise Refused(f"warm-up request {index} gave a non-finite output {key!r}")
