"""`python -m bench.archive [--data DIR] [--images N]`: the archive pipeline against `covidxray predict`.

Over the same N films (linked into a temporary folder), side by side in one run: `covidxray predict --json`
(one process, the service's environment) and `covidxray score-archive` with the DirectRunner in memory
(one worker) and in multi-process mode (`--direct_num_workers=2 --direct_running_mode=multi_processing`).
Each command runs twice: over the first `--warm` films (its fixed cost: imports, model loading, worker
start-up), then over all N. The table gives wall time, images per second over the whole run and at the
margin ((N - warm) / (t_N - t_warm): the rate once started), the CPU time per 1000 films at the margin
(the compute a worker pays, whatever else runs), and the peak RSS of the command's process tree.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = {".png", ".jpg", ".jpeg"}


def link_films(data: Path, count: int, into: Path) -> int:
    """Link the first `count` films found under `data` (sorted) into `into`; return how many."""
    films = itertools.islice((p for p in sorted(data.rglob("*")) if p.suffix.lower() in SUFFIXES), count)
    n = 0
    for n, film in enumerate(films, 1):
        (into / f"{n:05d}{film.suffix.lower()}").symlink_to(film.resolve())
    return n


def measure(command: list[str]) -> tuple[float, float, float]:
    """Run `command`; return (seconds, CPU seconds of its whole process tree, peak RSS in MiB of the tree,
    sampled every 0.1 s). CPU time, unlike wall time, does not depend on what else the machine runs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if process.returncode != 0:
        raise RuntimeError(
            f"{command[:2]} failed: {process.stderr.read().decode()[-2000:] if process.stderr else ''}"
        )
    return seconds, cpu, peak / 2**20


def commands(films: Path, out: Path) -> dict[str, list[str]]:
    """The three commands, by the name the table shows."""
    beam = [str(ROOT / ".venv-beam/bin/covidxray"), "score-archive", "--input", f"{films}/*", "--output"]
    return {
        "covidxray predict (1 process)": [str(ROOT / ".venv/bin/covidxray"), "predict", "--json", str(films)],
        "score-archive, DirectRunner in memory": [*beam, str(out / "memory")],
        "score-archive, DirectRunner 2 processes": [
            *beam,
            str(out / "multi"),
            "--direct_num_workers=2",
            "--direct_running_mode=multi_processing",
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Link the films, run the three commands, print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.archive", description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/cxr")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=20, help="films of the short run that measures start-up")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        films, few, out = Path(tmp) / "films", Path(tmp) / "few", Path(tmp) / "out"
        films.mkdir()
        few.mkdir()
        n = link_films(args.data, args.images, films)
        warm = link_films(args.data, args.warm, few)
        gate = os.environ.get("COVIDXRAY_OOD", "refuse")
        print(f"{n} films from {args.data} on {os.cpu_count()} CPUs, COVIDXRAY_OOD={gate}")
        print(
            f"| command | start-up s ({warm} films) | s ({n} films) | images/s | images/s once started "
            "| CPU s per 1000 films once started | peak RSS (MiB) |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
        short = commands(few, out / "few")
        for name, command in commands(films, out).items():
            started, started_cpu, _ = measure(short[name])
            seconds, cpu, rss = measure(command)
            margin = (n - warm) / max(seconds - started, 1e-9)
            cpu_per_1000 = (cpu - started_cpu) * 1000 / (n - warm)
            print(
                f"| {name} | {started:.1f} | {seconds:.1f} | {n / seconds:.1f} | {margin:.1f} "
                f"| {cpu_per_1000:.1f} | {rss:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
