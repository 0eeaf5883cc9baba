"""Evaluation of a model on a labelled folder: evaluate (with the gate's figures on request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from covidxray.cli.common import data_folder, data_option, ood_option, runtime_option


@click.command()
@data_option("folder (or gs://bucket/prefix) with <label>/ subfolders")
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="the .keras model (default: the shipped one)",
)
@click.option(
    "--backend",
    type=click.Choice(["keras", "automl"]),
    default="keras",
    show_default=True,
    help="automl: the endpoint configured by COVIDXRAY_AUTOML_ENDPOINT",
)
@runtime_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option(
    "--report",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="also write confusion-matrix, ROC and reliability PNGs here",
)
@ood_option("also check the gate: OOD/<kind>/* must be caught, DATA's films let through")
def evaluate(
    data_dir: str,
    model_path: Path | None,
    backend: str,
    runtime_name: str,
    as_json: bool,
    report: Path | None,
    ood_dir: Path | None,
) -> None:
    """Evaluate a model on DATA/<label>/* (through the serving runtime by default)."""
    with data_folder(data_dir) as folder:
        _evaluate(folder, model_path, backend, runtime_name, as_json, report, ood_dir)


def _evaluate(
    data_dir: Path,
    model_path: Path | None,
    backend: str,
    runtime_name: str,
    as_json: bool,
    report: Path | None,
    ood_dir: Path | None = None,
) -> None:
    import json

    from covidxray.ml import evaluation
    from covidxray.ml.datasets import list_images
    from covidxray.predictors.runtime import DEFAULT_MODEL, load_runtime, run_files

    files, labels = list_images(data_dir)
    if not files:
        raise click.ClickException(f"no images under {data_dir}/<label>/")
    if backend == "automl":
        logits, errors, temperature, model, served_by = _automl_logits(files, progress=not as_json)
    else:
        runtime = load_runtime(model_path or DEFAULT_MODEL, None if runtime_name == "onnx" else runtime_name)
        logits, errors, _ = run_files(runtime, files, progress=not as_json)
        temperature, served_by = runtime.info.temperature, runtime.name
        model = {"name": runtime.info.name, "version": runtime.info.version}
    bad = [f"{f}: {e}" for f, e in zip(files, errors, strict=True) if e]
    if bad:
        raise click.ClickException("unusable images:\n" + "\n".join(bad))
    patients = sources = None
    shortcut: list[str] = []
    manifest = evaluation.find_manifest(data_dir)
    if manifest is not None:
        rows = evaluation.read_manifest(manifest)
        patients = [rows[f.resolve()]["patient_id"] for f in files]
        sources = [p.split("-", 1)[0] for p in patients]
        shortcut = evaluation.covid_bearing_sources(rows)
    result = evaluation.evaluate_logits(logits, labels, temperature, patients, sources, shortcut)
    result.update(
        backend=backend, runtime=served_by, model=model, manifest=str(manifest) if manifest else None
    )
    if ood_dir is not None:
        result["ood"] = _gate_figures(model_path or DEFAULT_MODEL, files, ood_dir)
    if report is not None:
        from covidxray.ml.report import write_report

        write_report(report, result, logits, labels)
        if ood_dir is not None:
            from covidxray.ml.gate_fit import histogram_png

            histogram_png(result["ood"], report / "ood_histogram.png")
    text = evaluation.format_table(result)
    if "ood" in result:
        text += "\n" + _gate_table(result["ood"])
    click.echo(json.dumps(result, indent=2) if as_json else text)


def _gate_figures(model_path: Path, files: list[Path], ood_dir: Path) -> dict[str, Any]:
    """The gate's figures: DATA's frontal films refused, and each kind under OOD caught."""
    import json

    from covidxray.ml.gate_fit import evaluate_gate, kind_folders
    from covidxray.predictors.gate import Gate, gate_path
    from covidxray.predictors.runtime import load_runtime

    path = gate_path(model_path)
    if path is None or not path.is_file():
        raise click.ClickException(f"{model_path} has no gate; fit one with `covidxray gate`")
    result = evaluate_gate(Gate.load(path), load_runtime(model_path), files, kind_folders(ood_dir))
    entry = json.loads(model_path.with_suffix(".json").read_text())["ood"]
    if entry.get("cross_validated"):  # the head learnt from the known kinds: these figures are honest
        result["cross_validated"] = entry["cross_validated"]
    return result


def _gate_table(result: dict[str, Any]) -> str:
    """The gate's figures as lines of text."""
    frontal, threshold = result["frontal"], result["threshold"]
    lines = [f"gate (threshold {threshold:.3f}): {frontal['refused']}/{frontal['n']} frontal films refused"]
    for kind, row in result["kinds"].items():
        lines.append(f"  {kind}: {row['caught']}/{row['n']} caught, {row['named']} named as {kind}")
    if "cross_validated" in result:
        lines.append("  caught by a head that never saw the patient (patient-grouped cross-validation):")
        for kind, row in result["cross_validated"]["kinds"].items():
            lines.append(f"    {kind}: {row['caught']}/{row['n']}")
    return "\n".join(lines)


def _automl_logits(
    files: list[Path], progress: bool
) -> tuple[Any, list[str | None], float, dict[str, str], str]:
    """Ask the configured AutoML endpoint; its probabilities become log-probabilities (temperature 1)."""
    import numpy as np

    from covidxray.errors import BackendUnavailable
    from covidxray.predictors.automl import AutoMLPredictor, predict_files
    from covidxray.settings import ConfigError, Settings

    try:
        predictor = AutoMLPredictor.from_settings(Settings.from_env())
        probs, errors = predict_files(predictor, files, progress=progress)
    except (ConfigError, BackendUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    model = {"name": predictor.model_name, "version": predictor.model_version}
    return np.log(np.clip(probs, 1e-12, 1.0)), errors, 1.0, model, "automl"
