"""Model runtimes: the ONNX twin (served by default) and the Keras model, behind one interface.

Nothing here imports TensorFlow or Keras at module level; the ONNX path never does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covidxray.labels import LABELS

if TYPE_CHECKING:
    from covidxray.imaging.prepare import Prepared

DEFAULT_MODEL = Path(__file__).resolve().parent.parent.parent / "app-keras" / "model" / "covidxray-cnn.keras"
LOGITS, FEATURES = "logits", "features"


@dataclass
class ModelInfo:
    """The model's metadata JSON (written by training next to the model)."""

    name: str
    version: str
    labels: tuple[str, ...] = LABELS
    input_size: int = 224
    preprocessing_version: str = "1"
    temperature: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, json_path: str | Path) -> ModelInfo:
        """Read the metadata JSON; unknown keys go to `extra`."""
        raw = json.loads(Path(json_path).read_text())
        known = {f.name for f in fields(cls)} - {"extra"}
        info = cls(**{k: v for k, v in raw.items() if k in known})
        info.labels = tuple(info.labels)
        info.input_size = int(info.input_size)
        info.temperature = float(info.temperature)
        info.preprocessing_version = str(info.preprocessing_version)
        info.extra = {k: v for k, v in raw.items() if k not in known}
        return info


class OnnxRuntime:
    """Runs the exported ONNX twin with onnxruntime (session.run is thread-safe)."""

    def __init__(self, onnx_path: str | Path, info: ModelInfo, threads: int = 1, name: str = "onnx"):
        import onnxruntime as ort

        # Chosen by measurement (bench/twins.py; README "Performance"): one thread per worker (the
        # workers take a core each), every graph optimisation (basic alone runs the float twin 1.4x and
        # the int8 twin 1.9x slower: it skips the NCHWc layout and the QDQ fusions), the memory arena on
        # (off made no measurable difference), operators run sequentially.
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_cpu_mem_arena = True
        self.path = Path(onnx_path)
        self.info = info
        self.name = name  # what /readyz and `evaluate` report: onnx (the float twin) or onnx-int8
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._weights: tuple[np.ndarray, np.ndarray] | None = None

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (logits (n, 3), feature maps (n, h, w, c)) for a float32 batch (n, size, size, 1)."""
        logits, features = self._session.run([LOGITS, FEATURES], {"image": np.asarray(batch, np.float32)})
        return logits, features

    @property
    def output_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the output layer's kernel (c, 3) and bias (3,), read from the ONNX initializers."""
        if self._weights is None:
            self._weights = _onnx_output_weights(self.path, len(self.info.labels))
        return self._weights


class KerasRuntime:
    """Runs the Keras model itself (calls are serialised with a lock)."""

    name = "keras"

    def __init__(self, keras_path: str | Path, info: ModelInfo):
        import keras

        self.info = info
        self._model = keras.models.load_model(keras_path, compile=False)
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (logits (n, 3), feature maps (n, h, w, c)) for a float32 batch (n, size, size, 1)."""
        with self._lock:
            logits, features = self._model(np.asarray(batch, np.float32), training=False)
        return np.asarray(logits), np.asarray(features)

    @property
    def output_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the output layer's kernel (c, 3) and bias (3,)."""
        kernel, bias = self._model.get_layer(LOGITS).get_weights()
        return np.asarray(kernel), np.asarray(bias)


RUNTIMES = ("onnx", "onnx-float", "onnx-int8", "keras")


def load_runtime(
    model_path: str | Path = DEFAULT_MODEL, runtime: str | None = None, threads: int = 1
) -> OnnxRuntime | KerasRuntime:
    """Load the model at `model_path` (the .keras file).

    `onnx` (the default) runs the twin the metadata names to serve, `onnx-float` and `onnx-int8` a given
    twin, `keras` the Keras model itself.
    """
    model_path = Path(model_path)
    info = ModelInfo.load(model_path.with_suffix(".json"))
    if runtime == "keras":
        return KerasRuntime(model_path, info)
    if runtime not in (None, "", *RUNTIMES):
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    twin = info.extra.get("serve", "onnx-float") if runtime in (None, "", "onnx") else runtime
    files = {name: entry.get("file") for name, entry in info.extra.get("twins", {}).items()}
    files.setdefault("onnx-float", model_path.with_suffix(".onnx").name)
    if twin not in files:
        raise ValueError(f"the model at {model_path} has no {twin} twin; it has: {', '.join(sorted(files))}")
    return OnnxRuntime(
        model_path.parent / files[twin], info, threads, "onnx" if twin == "onnx-float" else twin
    )


def _onnx_output_weights(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Trace the `logits` output back to its MatMul/Gemm kernel (c, n) and bias (n,; zeros if folded away)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producer = {out: node for node in graph.node for out in node.output}
    kernel, bias, name = None, np.zeros(n_classes, np.float32), LOGITS
    while kernel is None and name in producer:
        node = producer[name]
        known = [consts[i] for i in node.input if i in consts]
        if node.op_type in ("MatMul", "Gemm") and known:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            kernel = known[0].T if attrs.get("transB", 0) else known[0]
            bias = bias + (known[1].reshape(-1) if len(known) > 1 else 0)
        elif node.op_type == "Add" and known:
            bias = bias + known[0].reshape(-1)
        elif node.op_type not in ("Identity", "Add"):
            break
        name = next(i for i in node.input if i not in consts)
    if kernel is None or kernel.shape[1] != n_classes:
        raise RuntimeError(f"cannot identify the output layer's weights in {path}")
    return kernel.astype(np.float32), bias.astype(np.float32)


def prepared_batches(
    runtime: OnnxRuntime | KerasRuntime,
    files: list[Path],
    batch_size: int = 16,
    errors: list[str | None] | None = None,
) -> Iterator[tuple[list[int], list[Prepared], np.ndarray, np.ndarray]]:
    """Decode `files` through `prepare` and run them batch by batch: yield (rows, prepared images, logits,
    feature maps) for every batch of `batch_size` files (empty when none of them could be used). A file
    that cannot be used is noted in `errors` (by row) when given, else it raises."""
    from covidxray.errors import ApiError
    from covidxray.imaging.prepare import prepare

    size = runtime.info.input_size
    for start in range(0, len(files), batch_size):
        chunk, rows = [], []
        for i in range(start, min(start + batch_size, len(files))):
            try:
                chunk.append(prepare(Path(files[i]).read_bytes(), size))
                rows.append(i)
            except (ApiError, OSError) as exc:
                if errors is None:
                    raise
                errors[i] = str(exc)
        if chunk:
            yield rows, chunk, *runtime.run(np.stack([p.tensor for p in chunk]))
        else:
            yield rows, chunk, np.zeros((0, len(runtime.info.labels)), np.float32), np.zeros((0, 1, 1, 1))


def run_files(
    runtime: OnnxRuntime | KerasRuntime,
    files: list[Path],
    batch_size: int = 16,
    progress: bool = False,
    gate: Any = None,
) -> tuple[np.ndarray, list[str | None], list[str | None]]:
    """Prepare and run `files`; return logits (n, 3) (NaN rows for unusable files), per-file errors, and
    per-file messages of the OOD `gate` (a `gate.Guard`, if given) for the files it does not pass."""
    from tqdm import tqdm

    logits = np.full((len(files), len(runtime.info.labels)), np.nan, dtype=np.float32)
    errors: list[str | None] = [None] * len(files)
    refusals: list[str | None] = [None] * len(files)
    with tqdm(total=len(files), disable=not progress, unit="image") as bar:
        batches = prepared_batches(runtime, files, batch_size, errors)
        for start, (rows, chunk, batch_logits, features) in zip(
            range(0, len(files), batch_size), batches, strict=True
        ):
            logits[rows] = batch_logits
            for row, prepared, maps in zip(rows, chunk, features, strict=True):
                verdict = gate and gate.check_maps(prepared, maps)
                if verdict and not verdict.passed:
                    refusals[row] = verdict.message()
            bar.update(min(batch_size, len(files) - start))
    return logits, errors, refusals
