"""The compute limit: images per second that decode + preprocess + inference reach in-process."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from pathlib import Path
from typing import Any

from .images import BenchImage

PROCESSES = 2  # one per core, each with a single-threaded onnxruntime session, as the served workers


def _loaded(model: Path) -> Any:
    from covidxray.predictors.keras import KerasPredictor

    predictor = KerasPredictor(model)
    predictor.load()
    return predictor


def _worker(model: Path, data: bytes, seconds: float, go: Any, results: Any) -> None:
    """Load the model, say so, wait for the others, then prepare + predict `data` for `seconds`."""
    from covidxray.imaging.prepare import prepare

    try:
        predictor = _loaded(model)
        for _ in range(3):  # warm-up
            predictor.predict(prepare(data, predictor.input_size), data)
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))
        raise
    results.put(("ready", 0.0))
    go.wait()
    count, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        predictor.predict(prepare(data, predictor.input_size), data)
        count += 1
    results.put(("rate", count / elapsed))


def _next(results: Any, procs: list[Any], timeout: float) -> float:
    """The next message's value; raise if a process failed or went silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kind, value = results.get(timeout=0.5)
        except queue.Empty:
            if any(proc.exitcode not in (None, 0) for proc in procs):
                raise RuntimeError("a compute process died") from None
            continue
        if kind == "error":
            raise RuntimeError(f"a compute process failed: {value}")
        return float(value)
    raise TimeoutError(f"no word from the compute processes in {timeout} s")


def compute_limit(image: BenchImage, model: Path, seconds: float) -> float:
    """Images per second reached by PROCESSES processes running prepare + predict side by side."""
    ctx = mp.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(model, image.data, seconds, go, results)) for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            _next(results, procs, timeout=300)
        go.set()
        return sum(_next(results, procs, timeout=seconds + 60) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
