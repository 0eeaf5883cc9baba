"""`python -m bench [--quick] [--baseline REF] [--out DIR]`: run, write results.json and RESULTS.md, print
the tables."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .plan import FULL, QUICK
from .report import machine_line, markdown, tables, targets
from .run import run

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, write and print."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few requests with a Python client, no wrk")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.json and RESULTS.md")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="the .keras model (default: COVIDXRAY_MODEL or the shipped one)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        default=None,
        help="a git ref whose code and model are checked out and timed beside today's (e.g. a tag)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(message)s", stream=sys.stderr)
    results = run(QUICK if args.quick else FULL, args.model, args.baseline)
    results["targets"] = targets(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "RESULTS.md").write_text(markdown(results))
    print(machine_line(results) + "\n\n" + tables(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
