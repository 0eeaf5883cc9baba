"""One benchmark run: compute limit, the service and the original design served side by side, memory."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from covidxray.predictors.runtime import DEFAULT_MODEL, ModelInfo
from covidxray.settings import Settings
from covidxray.web.auth import issue_token

from . import speedups
from .baseline import Code, checkout, stage_times, today
from .clients import Load, run_python, run_wrk, wrk_path
from .compute import PROCESSES, compute_limit
from .images import BenchImage, bench_images
from .machine import cpu_ticks, describe
from .plan import Plan
from .servers import ROOT, THREADS, WORKERS, Served, serve

log = logging.getLogger(__name__)
SECRET = "bench-jwt-secret-" + "k" * 32


def run(plan: Plan, model: Path | None = None, baseline: str | None = None) -> dict[str, Any]:
    """Measure everything the plan asks for and return the results as a JSON-ready dict; with `baseline`
    (a git ref), that commit's code and model are timed and served beside today's in the same run."""
    if not plan.quick:
        wrk_path()  # fail before measuring anything
    with checkout(baseline) if baseline else contextlib.nullcontext() as base:
        return _run(plan, model or Settings.from_env().model or DEFAULT_MODEL, base)


def _run(plan: Plan, model: Path, base: Code | None) -> dict[str, Any]:
    images = bench_images()
    token = issue_token(Settings(jwt_keys={"": SECRET}), "bench", ttl=6 * 3600)
    results: dict[str, Any] = {
        "mode": "quick" if plan.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": describe(),
        "setup": {
            "gunicorn_workers": WORKERS,
            "gunicorn_threads": THREADS,
            "original_workers": plan.original_workers,
            "compute_processes": PROCESSES,
            "client": "python" if plan.quick else "wrk (1 thread, same machine)",
        },
        "model": _model_info(model),
        "images": {
            i.name: {"format": i.format, "width": i.width, "height": i.height, "bytes": len(i.data)}
            for i in images
        },
    }
    if base is not None:
        results["baseline"] = {"ref": base.label, "commit": base.commit, "model": _model_info(base.model)}
    with tempfile.TemporaryDirectory(prefix="covidxray-bench-") as tmp:
        work = Path(tmp)
        files = {}
        for image in images:
            files[image.name] = work / image.filename
            files[image.name].write_bytes(image.data)
        log.info("per-image compute%s", f", today beside {base.label}" if base else "")
        codes = [today(model)] if base is None else [base, today(model)]
        rounds = 1 if plan.quick else 3
        stages = {name: stage_times(codes, path, plan.stage_repeats, rounds) for name, path in files.items()}
        if base is not None:
            results["stages"] = stages
        log.info("compute limit")
        results["compute"] = {
            i.name: {
                "images_per_s": round(compute_limit(i, model, plan.compute_seconds), 1),
                "prepare_ms": stages[i.name]["today"]["prepare_ms"],
                "inference_ms": stages[i.name]["today"]["inference_ms"],
            }
            for i in images
        }
        log.info("speed-ups one by one")
        results["speedups"] = {
            "decoders": speedups.decoders(images, plan.stage_repeats),
            "twins": speedups.twins(model, 10 * plan.stage_repeats),
        }
        log.info("service")
        with serve("service", work / "service", SECRET, token, images[-1], model) as served:
            results["service"] = _service(served, plan, images, files, token)
            results["service"]["heatmap"] = speedups.heatmap(
                served.base, images[0], token, 10 if plan.quick else 100
            )
        if base is not None:
            log.info("baseline %s", base.label)
            with serve(
                "service", work / "baseline", SECRET, token, images[-1], base.model, root=base.root
            ) as served:
                results["baseline"].update(_latency_runs(served, plan, images, files, token, plan.levels))
                results["baseline"]["heatmap"] = speedups.heatmap(  # drawn at prediction before 2026-12-06
                    served.base, images[0], token, 10 if plan.quick else 100
                )
        log.info("original design")
        with serve(
            "original", work / "original", SECRET, token, images[-1], model, plan.original_workers
        ) as served:
            results["original"] = _latency_runs(served, plan, images, files, token)
    return results


def _load(
    served: Served, plan: Plan, image: BenchImage, path: Path, token: str, level: int, seconds: float
) -> Load:
    """One latency run at `level`, then wait for the server to drain."""
    if plan.quick:
        load = run_python(served.base, image, token, level, 2 * level if served.design == "service" else 1)
    else:
        load = run_wrk(served.base, [path], token, level, seconds)
    wait_idle(served)
    served.check()
    return load


def _levels(
    served: Served,
    plan: Plan,
    images: tuple[BenchImage, ...],
    files: dict[str, Path],
    token: str,
    levels: tuple[int, ...],
    seconds: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for image in images:
        loads = {
            str(c): _load(served, plan, image, files[image.name], token, c, seconds).as_dict() for c in levels
        }
        out[image.name] = {"levels": loads, "saturation_rps": max(x["rps"] for x in loads.values())}
        log.info("%s %s: %s rps", served.design, image.name, out[image.name]["saturation_rps"])
    return out


def _service(
    served: Served, plan: Plan, images: tuple[BenchImage, ...], files: dict[str, Path], token: str
) -> dict[str, Any]:
    """Cold start, RSS over the soak run, then the latency runs of the service."""
    for image in images:  # warm-up: every worker and thread sees every image
        run_python(served.base, image, token, 2 * THREADS, 4 * THREADS)
    wait_idle(served)
    served.check()
    before = served.memory_mb()
    if plan.quick:
        soak = run_python(served.base, images[0], token, plan.soak_concurrency, plan.soak_requests)
    else:
        soak = run_wrk(
            served.base,
            list(files.values()),
            token,
            plan.soak_concurrency,
            600,
            max_requests=plan.soak_requests,
        )
    wait_idle(served)
    served.check()
    after = served.memory_mb()
    memory = {
        "rss_before_soak_mb": before,
        "rss_after_soak_mb": after,
        "soak": soak.as_dict(),
        "rss_growth": max((a - b) / b for a, b in zip(after, before, strict=True)),
    }
    served_out = _levels(served, plan, images, files, token, plan.levels, plan.service_seconds)
    memory["peak_rss_mb"] = served.memory_mb("VmHWM")
    return {"cold_start_s": served.cold_start_s, "memory": memory, "served": served_out}


def _latency_runs(
    served: Served,
    plan: Plan,
    images: tuple[BenchImage, ...],
    files: dict[str, Path],
    token: str,
    levels: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Cold start, latency runs and peak RSS of the original design (or of the baseline, at `levels`)."""
    if levels is None:
        levels, seconds = plan.original_levels, plan.original_seconds
    else:
        seconds = plan.service_seconds
    served_out = _levels(served, plan, images, files, token, levels, seconds)
    return {
        "cold_start_s": served.cold_start_s,
        "served": served_out,
        "memory": {"peak_rss_mb": served.memory_mb("VmHWM")},
    }


def wait_idle(served: Served, quiet_ticks: int = 2, timeout: float = 120) -> None:
    """Wait until the workers stop using CPU (requests left over by a finished load run are done)."""
    deadline = time.monotonic() + timeout
    last = sum(cpu_ticks(pid) for pid in served.worker_pids())
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = sum(cpu_ticks(pid) for pid in served.worker_pids())
        if now - last <= quiet_ticks:
            return
        last = now


def _model_info(model: Path) -> dict[str, Any]:
    """Which model was measured."""
    info = ModelInfo.load(model.with_suffix(".json"))
    shown = model.resolve().relative_to(ROOT) if model.resolve().is_relative_to(ROOT) else model
    return {"path": str(shown), "name": info.name, "version": info.version, "input_size": info.input_size}
