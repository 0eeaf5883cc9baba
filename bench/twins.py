"""Inference time of ONNX models side by side: onnxruntime, one thread, batch 1, in one run.

    .venv/bin/python -m bench.twins [FILE.onnx ...] [--repeats N]

Without files it times the shipped model's twins (float and int8). Pass an older model's `.onnx`
(for example one taken from git history) to time it beside them. Prints a Markdown table (ms).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from covidxray.predictors.runtime import DEFAULT_MODEL

from .machine import describe


def time_model(path: Path, repeats: int) -> tuple[float, float]:
    """Median and 90th-percentile milliseconds of one batch-1 run of the model at `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    image = session.get_inputs()[0]
    size = int(image.shape[1])
    batch = np.random.default_rng(0).random((1, size, size, 1), dtype=np.float32)
    for _ in range(10):
        session.run(None, {image.name: batch})
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        session.run(None, {image.name: batch})
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), float(np.percentile(times, 90))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    files = args.files or [DEFAULT_MODEL.with_suffix(".onnx"), DEFAULT_MODEL.with_suffix(".int8.onnx")]
    machine = describe()
    print(f"CPU: {machine['cpu']} ({machine['nproc']} cores); onnxruntime, 1 thread, batch 1\n")
    print("| model | median ms | p90 ms |\n|---|---|---|")
    for path in files:
        median, p90 = time_model(path, args.repeats)
        print(f"| {path.name} | {median:.2f} | {p90:.2f} |")


if __name__ == "__main__":
    main()
