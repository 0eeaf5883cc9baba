"""Targets as ratios from one run, the printed table and bench/RESULTS.md."""

from __future__ import annotations

from typing import Any

PNG = "png-1024"
TARGETS = {
    "vs_original": 30.0,  # served throughput ≥ 30× the original design, per image
    "vs_compute": 0.85,  # served throughput ≥ 0.85 of the compute limit, per image
    "vs_baseline_compute": 0.8,  # png-1024 per-image compute ≤ 0.8× the baseline's (code and model)
    "p50_vs_compute": 1.25,  # served p50 at concurrency 1 ≤ 1.25× the per-image compute
    "png_decoder": 2.0,  # the fast PNG decoder ≥ 2× Pillow's
    "int8": 1.8,  # the int8 twin ≥ 1.8× the float twin
    "cold_start_s": 1.5,  # without a baseline; with one: no slower than the baseline's
    "rss_mb": 300.0,
    "rss_growth": 0.05,
    "heatmap": 1.15,  # explain=1 adds at most 15 % to a request
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
    png = compute[PNG]
    per_image = png["prepare_ms"] + png["inference_ms"]
    if "stages" in results:
        stages, ref = results["stages"][PNG], results["baseline"]["ref"]
        ratio = _ratio(stages["today"]["total_ms"], stages[ref]["total_ms"])
        add(f"{PNG}: per-image compute, today / {ref}", ratio, TARGETS["vs_baseline_compute"], False)
    p50 = service["served"][PNG]["levels"]["1"]["p50_ms"]
    add(f"{PNG}: served p50 at concurrency 1 / per-image compute", _ratio(p50, per_image),
        TARGETS["p50_vs_compute"], False)  # fmt: skip
    decoders, twins = results["speedups"]["decoders"][PNG], results["speedups"]["twins"]
    add(f"{PNG}: libspng speed / Pillow's", _ratio(decoders["pillow_ms"], decoders["fast_ms"]),
        TARGETS["png_decoder"], True)  # fmt: skip
    add("int8 twin speed / float twin's", _ratio(twins["float_ms"], twins["int8_ms"]), TARGETS["int8"], True)
    if "baseline" in results:
        ref, base_cold = results["baseline"]["ref"], results["baseline"]["cold_start_s"]
        add(f"cold start to first 200 (s), ≤ {ref}'s", service["cold_start_s"], base_cold, False)
    else:
        add("cold start to first 200 (s)", service["cold_start_s"], TARGETS["cold_start_s"], False)
    memory = service["memory"]
    add("peak RSS per worker (MB)", max(memory["peak_rss_mb"]), TARGETS["rss_mb"], False)
    soaked = memory["soak"]["requests"]
    add(f"RSS growth over {soaked} requests", memory["rss_growth"], TARGETS["rss_growth"], False)
    heat = service["heatmap"]
    add(f"{PNG}: p50 with explain=1 / without", _ratio(heat["p50_explain_ms"], heat["p50_ms"]),
        TARGETS["heatmap"], False)  # fmt: skip
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
    """Markdown tables: throughput, today beside the baseline, speed-ups, latency, process, targets."""
    service, original, compute = results["service"], results["original"], results["compute"]
    base = results.get("baseline")
    designs = [("service", service)]
    if base is not None:
        designs.append((f"baseline {base['ref']}", base))
    designs.append(("original", original))
    throughput = [
        [
            name,
            f"{c['prepare_ms']:g} + {c['inference_ms']:g}",
            c["images_per_s"],
            *(data["served"][name]["saturation_rps"] for _, data in designs),
        ]
        for name, c in compute.items()
    ]
    latency = [
        [design, name, level, load["rps"], _latency(load), load["requests"], sum(load["errors"].values())]
        for design, data in designs
        for name, served in data["served"].items()
        for level, load in served["levels"].items()
    ]
    mem = service["memory"]
    process = [
        [
            "service",
            service["cold_start_s"],
            " / ".join(map(str, mem["peak_rss_mb"])),
            f"{_mbs(mem['rss_before_soak_mb'])} → {_mbs(mem['rss_after_soak_mb'])}",
        ],
        *(
            [design, data["cold_start_s"], " / ".join(map(str, data["memory"]["peak_rss_mb"])), "–"]
            for design, data in designs[1:]
        ),
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
    parts = [
        _table(
            [
                "image",
                "prepare + inference (ms, 1 process)",
                "compute limit (img/s, 2 processes)",
                *(f"{design} served (req/s)" for design, _ in designs),
            ],
            throughput,
        )
    ]
    if "stages" in results:
        parts.append(_stages(results))
    parts += [
        _speedups(results),
        _table(
            ["design", "image", "concurrency", "req/s", "p50 / p95 / p99 (ms)", "requests", "errors"], latency
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
    return "\n\n".join(parts)


def _stages(results: dict[str, Any]) -> str:
    """Per-image compute of today's code and model beside the baseline's, each in its own process."""
    ref = results["baseline"]["ref"]
    rows = []
    for name, stages in results["stages"].items():
        old, new = stages[ref], stages["today"]
        rows.append(
            [
                name,
                f"{old['prepare_ms']:g} + {old['inference_ms']:g} = {old['total_ms']:g}",
                f"{new['prepare_ms']:g} + {new['inference_ms']:g} = {new['total_ms']:g}",
                round(new["total_ms"] / old["total_ms"], 3),
            ]
        )
    commit = results["stages"][PNG][ref]["commit"]
    header = [
        "image",
        f"{ref} ({commit}): prepare + inference (ms)",
        "today: prepare + inference (ms)",
        "today / baseline",
    ]
    return _table(header, rows)


def _speedups(results: dict[str, Any]) -> str:
    """Each speed-up on its own: decoders, the int8 twin, the heatmap's cost."""
    speed = results["speedups"]
    rows = [
        [f"decode {name}", "Pillow", d["pillow_ms"], "libspng" if name == PNG else "simplejpeg", d["fast_ms"]]
        for name, d in speed["decoders"].items()
    ]
    twins = speed["twins"]
    rows.append(
        ["inference, batch 1, 1 thread", "float twin", twins["float_ms"], "int8 twin", twins["int8_ms"]]
    )
    heatmaps = [("today", results["service"]["heatmap"], "drawn when fetched")]
    base = results.get("baseline", {})
    if "heatmap" in base:
        heatmaps.insert(0, (base["ref"], base["heatmap"], "drawn at prediction"))
    for name, heat, drawn in heatmaps:
        plain, explained = heat["p50_ms"], heat["p50_explain_ms"]
        rows.append([f"{name}: served {PNG}, p50 at concurrency 1", "plain", plain, "explain=1", explained])
        if "p50_fetch_ms" in heat:  # runs from before 2026-12-06 did not time it
            rows.append([f"{name}: GET its heatmap.png, p50", "", "", drawn, heat["p50_fetch_ms"]])
    return _table(["stage", "before", "ms", "after", "ms"], rows)


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
