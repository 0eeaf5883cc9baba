"""Time decode + preprocess + inference of one image in this process, with whichever covidxray is first
on the path: run by file path (never as part of the bench package) so that a baseline checkout's code
can be timed beside today's, in its own interpreter.

    python bench/stagejob.py IMAGE MODEL [--repeats N] [--runtime NAME]

Prints one JSON line: median milliseconds of `prepare` and of predict, and where covidxray came from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("image", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--runtime", default=None)
    args = parser.parse_args()
    import covidxray
    from covidxray.imaging.prepare import prepare
    from covidxray.predictors.keras import KerasPredictor

    predictor = KerasPredictor(args.model, args.runtime)
    predictor.load()
    data = args.image.read_bytes()
    prep, infer = [], []
    for _ in range(args.repeats + 3):
        t0 = time.perf_counter()
        prepared = prepare(data, predictor.input_size)
        t1 = time.perf_counter()
        predictor.predict(prepared, data)
        t2 = time.perf_counter()
        prep.append(t1 - t0)
        infer.append(t2 - t1)
    prepare_ms, inference_ms = (statistics.median(times[3:]) * 1000 for times in (prep, infer))
    print(
        json.dumps(
            {
                "prepare_ms": round(prepare_ms, 2),
                "inference_ms": round(inference_ms, 2),
                "code": str(Path(covidxray.__file__).resolve().parent.parent),
            }
        )
    )


if __name__ == "__main__":
    main()
