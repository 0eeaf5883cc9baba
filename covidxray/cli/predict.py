"""Offline prediction of image files and folders: predict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from covidxray.cli.common import runtime_option
from covidxray.settings import OOD_MODES


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@runtime_option
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write a CSV file",
)
def predict(
    paths: tuple[Path, ...], model_path: Path | None, runtime_name: str, as_json: bool, csv_path: Path | None
) -> None:
    """Classify image files (or folders of them) offline."""
    import csv
    import json
    import os

    from covidxray.ml.datasets import IMAGE_SUFFIXES
    from covidxray.predictors.calibration import decide, softmax
    from covidxray.predictors.gate import open_guard
    from covidxray.predictors.runtime import DEFAULT_MODEL, load_runtime, run_files

    if as_json and csv_path:
        raise click.UsageError("--json and --csv are exclusive")
    files = [
        f
        for p in paths
        for f in (sorted(p.rglob("*")) if p.is_dir() else [p])
        if f.is_file() and (f.suffix.lower() in IMAGE_SUFFIXES or not p.is_dir())
    ]
    model_path = model_path or DEFAULT_MODEL
    runtime = load_runtime(model_path, None if runtime_name == "onnx" else runtime_name)
    threshold = float(os.environ.get("COVIDXRAY_UNCERTAIN_BELOW", "0.6"))
    mode = os.environ.get("COVIDXRAY_OOD", "refuse").lower()
    if mode not in OOD_MODES:
        raise click.UsageError(f"COVIDXRAY_OOD must be one of {', '.join(OOD_MODES)}, got {mode!r}")
    try:
        gate = open_guard(mode, model_path)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    logits, errors, refusals = run_files(runtime, files, progress=True, gate=gate)
    labels = runtime.info.labels
    rows: list[dict[str, Any]] = []
    for path, row, error, refusal in zip(files, logits, errors, refusals, strict=True):
        error = error or (refusal if mode == "refuse" else None)
        if error:
            rows.append({"file": str(path), "predicted_class": None, "score": None, "error": error})
            continue
        probs = dict(zip(labels, softmax(row, runtime.info.temperature).tolist(), strict=True))
        predicted, score = decide(probs, threshold, flagged=refusal is not None)
        rows.append(
            {
                "file": str(path),
                "predicted_class": predicted,
                "score": round(score, 4),
                "probabilities": {k: round(v, 4) for k, v in probs.items()},
                **({"warning": refusal} if refusal else {}),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif csv_path:
        with csv_path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "predicted_class", "score", *labels, "error"])
            for r in rows:
                probs_row = (
                    [r["probabilities"][k] for k in labels] if "probabilities" in r else [""] * len(labels)
                )
                writer.writerow(
                    [r["file"], r["predicted_class"] or "", r["score"] or "", *probs_row, r.get("error", "")]
                )
        click.echo(f"wrote {len(rows)} rows to {csv_path}")
    else:
        for r in rows:
            detail = r.get("error") or "  ".join(f"{k}={v:.3f}" for k, v in r["probabilities"].items())
            click.echo(f"{r['file']}\t{r['predicted_class'] or 'error'}\t{detail}")
