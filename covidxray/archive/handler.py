"""The RunInference model handler for our ONNX twin: Beam's `OnnxModelHandlerNumpy`, loading the twin
through `load_runtime` (the one serving loads, with its metadata) and returning logits and the gate's
summary of the feature maps, from which `records.score` makes the answer with the serving code."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.onnx_inference import OnnxModelHandlerNumpy

from covidxray.predictors.gate import summarize
from covidxray.predictors.runtime import DEFAULT_MODEL, OnnxRuntime, load_runtime

#: The Beam metrics namespace of the pipeline's counters and RunInference's own.
NAMESPACE = "covidxray"


class TwinModelHandler(OnnxModelHandlerNumpy):  # type: ignore[misc]
    """Runs batches of prepared tensors (size, size, 1) through the model's ONNX twin, loaded once per
    worker process; each result's inference is (logits (3,), pooled features (c,))."""

    def __init__(
        self,
        model_path: str | None,
        runtime: str | None = None,
        *,
        min_batch_size: int = 1,
        max_batch_size: int = 16,
    ):
        super().__init__(
            model_uri=model_path or str(DEFAULT_MODEL),
            providers=["CPUExecutionProvider"],
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
        )
        self._model_path, self._runtime = model_path, runtime

    def load_model(self) -> OnnxRuntime:
        """The twin that the metadata names to serve (or `runtime`), as `covidxray predict` loads it; with no
        model path, the worker's own copy of the shipped model."""
        loaded = load_runtime(self._model_path or DEFAULT_MODEL, self._runtime)
        if not isinstance(loaded, OnnxRuntime):
            raise ValueError("the archive pipeline runs an ONNX twin, not the Keras model")
        return loaded

    def run_inference(
        self, batch: Sequence[np.ndarray], model: OnnxRuntime, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        """Logits and the gate's summary of the feature maps (`gate.summarize`) of each tensor in `batch`."""
        logits, features = model.run(np.stack(batch))
        return [
            PredictionResult(example, (row, summarize(maps)), model.info.version)
            for example, row, maps in zip(batch, logits, features, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        """The bytes of the batch's tensors."""
        return sum(int(example.nbytes) for example in batch)

    def get_metrics_namespace(self) -> str:
        """RunInference's own metrics go beside the pipeline's."""
        return NAMESPACE
