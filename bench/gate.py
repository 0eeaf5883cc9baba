"""What the gate for non-frontal inputs adds to a request, beside the naive way of running it.

    .venv/bin/python -m bench.gate [--model FILE] [--repeats N]

One process, one onnxruntime thread, on one 224 px film: the classifier alone; the classifier plus
the gate on the feature maps its forward pass already made (what the service does); the naive gate,
a second forward pass to get those maps; and the gate alone (summarising the maps and judging them),
whose cost the first two rows measure only within their noise. Prints a Markdown table (medians, ms).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from covidxray.predictors.gate import open_guard, summarize
from covidxray.predictors.keras import KerasPredictor
from covidxray.predictors.runtime import DEFAULT_MODEL

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "samples"


def median_ms(step: Callable[[], object], repeats: int) -> float:
    for _ in range(5):
        step()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        step()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    from covidxray.imaging.prepare import prepare

    predictor = KerasPredictor(args.model)
    predictor.load()
    guard = open_guard("refuse", args.model)
    assert guard is not None
    data = sorted(SAMPLE.glob("*.jpg"))[0].read_bytes()
    prepared = prepare(data, predictor.input_size)

    def classifier() -> object:
        return predictor.predict(prepared, data)

    def with_gate() -> object:
        outcome = predictor.predict(prepared, data)
        return guard.check(prepared, outcome.gate_input)

    def naive() -> object:
        predictor.predict(prepared, data)
        _, features = predictor.logits(prepared.tensor[None])
        return guard.check(prepared, summarize(np.asarray(features)[0]))

    maps = np.asarray(predictor.logits(prepared.tensor[None])[1])[0]

    def gate_alone() -> object:  # what the served path adds: summarise the maps and judge them
        return guard.check(prepared, summarize(maps))

    rows = [(name, median_ms(step, args.repeats)) for name, step in
            (("classifier alone", classifier), ("classifier + gate (served)", with_gate),
             ("classifier + gate, naive (second forward pass)", naive))]  # fmt: skip
    base = rows[0][1]
    print("| path | median ms per request | added by the gate |\n|---|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} | {ms - base:+.2f} |")
    alone = median_ms(gate_alone, args.repeats * 5)
    print(f"| the gate alone, from the maps of the classifier's forward pass | {alone:.2f} | |")


if __name__ == "__main__":
    main()
