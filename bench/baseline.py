"""An earlier commit's code and model, checked out beside today's so that both are timed in one run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .servers import ROOT

STAGEJOB = Path(__file__).resolve().parent / "stagejob.py"


@dataclass(frozen=True)
class Code:
    """A tree of covidxray to time: today's working tree, or a checked-out git ref."""

    label: str  # "today" or the ref
    root: Path
    commit: str
    model: Path  # the .keras model timed with it (a checkout: the one shipped in that tree)

    def environment(self) -> dict[str, str]:
        """The environment that makes a Python process import this tree's covidxray."""
        return {**os.environ, "PYTHONPATH": str(self.root)}


def today(model: Path) -> Code:
    """The working tree the benchmark runs from, with `model`."""
    return Code("today", ROOT, _git("rev-parse", "--short", "HEAD"), model)


@contextmanager
def checkout(ref: str) -> Iterator[Code]:
    """`ref` checked out (a detached git worktree) in a temporary folder, removed at the end."""
    commit = _git("rev-parse", "--short", ref)
    with tempfile.TemporaryDirectory(prefix="covidxray-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        _git("worktree", "add", "--detach", str(tree), commit)
        try:
            yield Code(ref, tree, commit, tree / "app-keras" / "model" / "covidxray-cnn.keras")
        finally:
            _git("worktree", "remove", "--force", str(tree))


def stage_times(codes: list[Code], image: Path, repeats: int, rounds: int = 3) -> dict[str, dict[str, Any]]:
    """Median ms of prepare and inference of `image` for each tree, each in its own process, one thread;
    the trees take turns `rounds` times so that a busy moment of the machine falls on all of them."""
    runs: dict[str, list[dict[str, Any]]] = {code.label: [] for code in codes}
    for _ in range(rounds):
        for code in codes:
            runs[code.label].append(_stagejob(code, image, repeats))
    out = {}
    for code in codes:
        prepare = statistics.median(r["prepare_ms"] for r in runs[code.label])
        inference = statistics.median(r["inference_ms"] for r in runs[code.label])
        out[code.label] = {
            "commit": code.commit,
            "prepare_ms": round(prepare, 2),
            "inference_ms": round(inference, 2),
            "total_ms": round(prepare + inference, 2),
        }
    return out


def _stagejob(code: Code, image: Path, repeats: int) -> dict[str, Any]:
    command = [sys.executable, str(STAGEJOB), str(image), str(code.model), "--repeats", str(repeats)]
    env = {**code.environment(), "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("COVIDXRAY_RUNTIME", None)
    done = subprocess.run(command, env=env, cwd=code.root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"timing {code.label} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(result["code"]) != code.root.resolve():
        raise RuntimeError(f"timing {code.label} imported covidxray from {result['code']}, not {code.root}")
    return dict(result)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()
