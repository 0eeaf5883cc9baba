"""Targets as ratios from one run, the printed table and bench/RESULTS.md."""

from __future__ import annotations

from typing import Any

PNG = "png-1024"
TARGETS = {
    "vs_original": 30.0,  # served throughput ≥ 30× the original design, per image
    "vs_compute": 0.7,  # served throughput ≥ 0.7 of the compute limit, per image
    "p50_c1_png_ms": 20.0,
    "cold_start_s": 1.5,
    "rss_mb": 300.0,
    "rss_growth": 0.10,
}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it was met."""
    service, original, compute = results["service"], results["original"], results["compute"]
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, at_least: bool) -> None:
        met = value is not None and (value >= limit if at_least else value <= limit)
        value = None if value is None else round(value, 3)
        rows.append(
            {"target": name, "value": value, "op": "≥" if at_least else "≤", "limit": limit, "met": met}
        )

    for image, served in service["served"].items():
        rps = served["saturation_rps"]
        vs_original = _ratio(rps, original["served"][image]["saturation_rps"])
        add(f"{image}: served / original", vs_original, TARGETS["vs_original"], True)
        vs_compute = _ratio(rps, compute[image]["images_per_s"])
        add(f"{image}: served / compute limit", vs_compute, TARGETS["vs_compute"], True)
    p50 = service["served"][PNG]["levels"]["1"]["p50_ms"]
    add(f"{PNG}: p50 at concurrency 1 (ms)", p50, TARGETS["p50_c1_png_ms"], False)
    add("cold start to first 200 (s)", service["cold_start_s"], TARGETS["cold_start_s"], False)
    memory = service["memory"]
    add("peak RSS per worker (MB)", max(memory["peak_rss_mb"]), TARGETS["rss_mb"], False)
    soaked = memory["soak"]["requests"]
    add(f"RSS growth over {soaked} requests", memory["rss_growth"], TARGETS["rss_growth"], False)
    return rows


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is zero (nothing answered within the run)."""
    return a / b if b else None


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _mbs(values: list[float]) -> str:
    return " / ".join(f"{v:g}" for v in values)


def _latency(level: dict[str, Any]) -> str:
    return f"{level['p50_ms']:g} / {level['p95_ms']:g} / {level['p99_ms']:g}"


def tables(results: dict[str, Any]) -> str:
    """Markdown tables: throughput, latency, process figures and targets."""
    service, original, compute = results["service"], results["original"], results["compute"]
    throughput = [
        [
            name,
            f"{c['prepare_ms']:g} + {c['inference_ms']:g}",
            c["images_per_s"],
            service["served"][name]["saturation_rps"],
            original["served"][name]["saturation_rps"],
        ]
        for name, c in compute.items()
    ]
    latency = []
    for design, data in (("service", service), ("original", original)):
        for name, served in data["served"].items():
            for level, load in served["levels"].items():
                latency.append(
                    [
                        design,
                        name,
                        level,
                        load["rps"],
                        _latency(load),
                        load["requests"],
                        sum(load["errors"].values()),
                    ]
                )
    mem = service["memory"]
    process = [
        [
            "service",
            service["cold_start_s"],
            " / ".join(map(str, mem["peak_rss_mb"])),
            f"{_mbs(mem['rss_before_soak_mb'])} → {_mbs(mem['rss_after_soak_mb'])}",
        ],
        ["original", original["cold_start_s"], " / ".join(map(str, original["memory"]["peak_rss_mb"])), "–"],
    ]
    target_rows = [
        [
            t["target"],
            t["value"] if t["value"] is not None else "no answer",
            f"{t['op']} {t['limit']:g}",
            "met" if t["met"] else "MISSED",
        ]
        for t in results["targets"]
    ]
    return "\n\n".join(
        [
            _table(
                [
                    "image",
                    "prepare + inference (ms, 1 process)",
                    "compute limit (img/s, 2 processes)",
                    "served (req/s)",
                    "original (req/s)",
                ],
                throughput,
            ),
            _table(
                ["design", "image", "concurrency", "req/s", "p50 / p95 / p99 (ms)", "requests", "errors"],
                latency,
            ),
            _table(
                [
                    "design",
                    "cold start to first 200 (s)",
                    "peak RSS per worker (MB)",
                    f"RSS per worker before → after {mem['soak']['requests']} requests (MB)",
                ],
                process,
            ),
            _table(["target", "measured", "limit", ""], target_rows),
        ]
    )


def machine_line(results: dict[str, Any]) -> str:
    """One sentence naming the machine and the run."""
    m = results["machine"]
    return (
        f"Machine: `nproc` {m['nproc']}, {m['cpu']}, {m['memory_gb']} GB memory, load average "
        f"{m['load_average'][0]} at start; Python {m['python']}, onnxruntime {m['versions']['onnxruntime']}, "
        f"TensorFlow {m['versions']['tensorflow-cpu']}. Run: {results['mode']}, {results['started_at']}, "
        f"model {results['model']['name']} {results['model']['version']} ({results['model']['path']})."
    )


def method(results: dict[str, Any]) -> str:
    """How the run measured, in a paragraph."""
    setup, soak = results["setup"], results["service"]["memory"]["soak"]
    images = ", ".join(f"{n} ({i['bytes'] // 1000} kB)" for n, i in results["images"].items())
    return (
        f"Images: {images}. Served: gunicorn, {setup['gunicorn_workers']} workers × "
        f"{setup['gunicorn_threads']} threads, embedded image store and SQLite log, rate limits off; load "
        f"from {setup['client']}. Compute limit: {setup['compute_processes']} processes, each `prepare` + "
        "predict (single-threaded onnxruntime) in a loop. Original design: `bench/original_app.py` (Keras "
        "`load_model` + `model.predict` per request, no storage, no log). Served req/s in the first table: "
        "the highest over the concurrency runs. Every run posts the same bytes, so the content-addressed "
        "store writes each image once; each request still hashes the upload and inserts its row in the "
        "SQLite log. RSS: VmRSS (VmHWM for the peak) of each gunicorn worker; before = after a warm-up, "
        f"after = {soak['requests']} more requests cycling the images at concurrency {soak['concurrency']}."
    )


def markdown(results: dict[str, Any]) -> str:
    """bench/RESULTS.md."""
    parts = ["# Benchmark results (`make bench`)", machine_line(results), method(results), tables(results)]
    return "\n\n".join(parts) + "\n"
