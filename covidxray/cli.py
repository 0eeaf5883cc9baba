"""The `covidxray` command line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click


@click.group()
def main() -> None:
    """covidxray: chest X-ray classification (covid, pneumonia, normal)."""


# --- model commands: train, evaluate, predict ---------------------------------------------------


@contextmanager
def _data_folder(location: str) -> Iterator[Path]:
    """The data at `location` (a folder or gs://bucket/prefix) as a local folder."""
    from .datasets import local_folder

    try:
        with local_folder(location) as folder:
            yield folder
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from exc


def _setup_logging() -> None:
    """Send library log lines to stderr for the command-line tools."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=str,
    help="folder (or gs://bucket/prefix) with train/<label>/ and val/<label>/",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="FILE.keras to write"
)
@click.option(
    "--backbone",
    type=click.Choice(["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "scratch"]),
    default="efficientnet-lite0",
    show_default=True,
    help="ImageNet-pretrained EfficientNet-Lite to fine-tune, or the small CNN trained from scratch",
)
@click.option("--size", type=click.IntRange(min=32), default=None, help="input size in pixels")
@click.option("--epochs", type=int, default=None, help="maximum epochs (early stopping on val)")
@click.option("--seed", type=int, default=None, help="random seed (member i uses seed + i)")
@click.option(
    "--members",
    type=click.IntRange(min=1),
    default=None,
    help="networks to train and average into the one shipped model",
)
@click.option(
    "--mixup",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Beta(a, a) parameter of mixup within each batch (0: off)",
)
@click.option("--hflip/--no-hflip", default=None, help="random left-right flips in the augmentation")
@click.option(
    "--ood",
    "ood_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="folder of known non-frontal inputs (ct/, lateral/) that the gate learns to name",
)
def train(
    data_dir: str,
    out: Path,
    backbone: str,
    size: int | None,
    epochs: int | None,
    seed: int | None,
    members: int | None,
    mixup: float | None,
    hflip: bool | None,
    ood_dir: Path | None,
) -> None:
    """Train the model; write FILE.keras, its ONNX twins FILE.onnx and FILE.int8.onnx, and FILE.json."""
    import json

    from .training import TrainConfig
    from .training import train as run_training

    _setup_logging()
    if out.suffix != ".keras":
        raise click.BadParameter("must end in .keras", param_hint="--out")
    options: dict[str, Any] = dict(
        size=size, epochs=epochs, seed=seed, members=members, mixup=mixup, hflip=hflip
    )
    cfg = TrainConfig.for_backbone(backbone, **{k: v for k, v in options.items() if v is not None})
    try:
        with _data_folder(data_dir) as folder:
            meta = run_training(folder, out, cfg, ood_dir=ood_dir)
    except RuntimeError as exc:  # the ONNX twin disagrees with Keras
        raise click.ClickException(str(exc)) from exc
    click.echo(
        json.dumps({k: meta[k] for k in ("name", "version", "temperature", "val", "onnx_max_abs_diff")})
    )


@main.command()
@click.option(
    "--data", "data_dir", required=True, type=str, help="folder with train/<label>/ and val/<label>/"
)
@click.option(
    "--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None
)
def quantize(data_dir: str, model_path: Path | None) -> None:
    """Write the model's int8 twin (calibrated on training films), measure it on val, record it."""
    import json

    from .training import int8_twin_for

    _setup_logging()
    from .runtime import DEFAULT_MODEL

    with _data_folder(data_dir) as folder:
        entry = int8_twin_for(model_path or DEFAULT_MODEL, folder)
    click.echo(json.dumps(entry))


@main.command()
@click.option(
    "--data", "data_dir", required=True, type=str, help="folder with train/<label>/ and val/<label>/"
)
@click.option(
    "--model", "model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None
)
@click.option(
    "--ood",
    "ood_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="folder of known non-frontal inputs (ct/, lateral/) that the gate learns to name",
)
def gate(data_dir: str, model_path: Path | None, ood_dir: Path | None) -> None:
    """Fit the gate for non-frontal inputs (threshold on val); write FILE.ood.npz and update FILE.json."""
    import json

    from .gatefit import build_gate
    from .runtime import DEFAULT_MODEL

    _setup_logging()
    with _data_folder(data_dir) as folder:
        entry = build_gate(model_path or DEFAULT_MODEL, folder, ood_dir)
    click.echo(json.dumps(entry))


@main.command()
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=str,
    help="folder (or gs://bucket/prefix) with <label>/ subfolders",
)
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
@click.option(
    "--runtime",
    "runtime_name",
    type=click.Choice(["onnx", "onnx-float", "onnx-int8", "keras"]),
    default="onnx",
    show_default=True,
    help="onnx: the served twin; keras: the Keras model itself",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option(
    "--report",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="also write confusion-matrix, ROC and reliability PNGs here",
)
@click.option(
    "--ood",
    "ood_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="also check the gate: OOD/<kind>/* must be caught, DATA's films let through",
)
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
    with _data_folder(data_dir) as folder:
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

    from . import evaluation
    from .runtime import DEFAULT_MODEL, load_runtime, run_files
    from .training import list_images

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
        evaluation.write_report(report, result, logits, labels)
        if ood_dir is not None:
            from .gatefit import histogram_png

            histogram_png(result["ood"], report / "ood_histogram.png")
    text = evaluation.format_table(result)
    if "ood" in result:
        text += "\n" + _gate_table(result["ood"])
    click.echo(json.dumps(result, indent=2) if as_json else text)


def _gate_figures(model_path: Path, files: list[Path], ood_dir: Path) -> dict[str, Any]:
    """The gate's figures: DATA's frontal films refused, and each kind under OOD caught."""
    from .gatefit import evaluate_gate, kind_folders
    from .ood import gate_path, open_guard
    from .runtime import load_runtime

    if gate_path(model_path) is None:
        raise click.ClickException(f"{model_path} has no gate; fit one with `covidxray gate`")
    guard = open_guard("refuse", model_path)
    assert guard is not None
    return evaluate_gate(guard.gate, load_runtime(model_path, "onnx-float"), files, kind_folders(ood_dir))


def _gate_table(result: dict[str, Any]) -> str:
    """The gate's figures as lines of text."""
    frontal, threshold = result["frontal"], result["threshold"]
    lines = [f"gate (threshold {threshold:.3f}): {frontal['refused']}/{frontal['n']} frontal films refused"]
    for kind, row in result["kinds"].items():
        lines.append(f"  {kind}: {row['caught']}/{row['n']} caught, {row['named']} named as {kind}")
    return "\n".join(lines)


def _automl_logits(
    files: list[Path], progress: bool
) -> tuple[Any, list[str | None], float, dict[str, str], str]:
    """Ask the configured AutoML endpoint; its probabilities become log-probabilities (temperature 1)."""
    import numpy as np

    from .automl import AutoMLPredictor, predict_files
    from .errors import BackendUnavailable
    from .settings import ConfigError, Settings

    try:
        predictor = AutoMLPredictor.from_settings(Settings.from_env())
        probs, errors = predict_files(predictor, files, progress=progress)
    except (ConfigError, BackendUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    model = {"name": predictor.model_name, "version": predictor.model_version}
    return np.log(np.clip(probs, 1e-12, 1.0)), errors, 1.0, model, "automl"


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--runtime",
    "runtime_name",
    type=click.Choice(["onnx", "onnx-float", "onnx-int8", "keras"]),
    default="onnx",
    show_default=True,
)
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

    from .calibration import softmax
    from .labels import UNCERTAIN
    from .ood import open_guard
    from .runtime import DEFAULT_MODEL, load_runtime, run_files
    from .training import IMAGE_SUFFIXES

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
    if mode not in ("refuse", "warn", "off"):
        raise click.UsageError(f"COVIDXRAY_OOD must be refuse, warn or off, got {mode!r}")
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
        probs = softmax(row, runtime.info.temperature)
        top = int(probs.argmax())
        rows.append(
            {
                "file": str(path),
                "predicted_class": labels[top] if probs[top] >= threshold and not refusal else UNCERTAIN,
                "score": round(float(probs[top]), 4),
                "probabilities": {k: round(float(v), 4) for k, v in zip(labels, probs, strict=True)},
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


# --- service commands ----------------------------------------------------------------------------


@main.command()
@click.option("--subject", required=True, help="who the token speaks for (the `sub` claim)")
@click.option(
    "--ttl", type=click.IntRange(min=1), default=3600, show_default=True, help="lifetime in seconds"
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(["predict", "read", "admin"]),
    help="repeat for several; default: predict and read",
)
def token(subject: str, ttl: int, scopes: tuple[str, ...]) -> None:
    """Print a signed JWT for the API, with the service's own settings and keys."""
    from .auth import issue_token
    from .settings import ConfigError, Settings

    try:
        settings = Settings.from_env().validated()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(issue_token(settings, subject, ttl=ttl, scopes=scopes or ("predict", "read")))


@main.command(
    "automl-emulator",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def automl_emulator(args: tuple[str, ...]) -> None:
    """Local stand-in for the Vertex AI / AutoML prediction service (see --help)."""
    from .automl_emulator import main as run

    run(list(args))


@main.command("bigquery-init")
def bigquery_init() -> None:
    """Create or migrate the BigQuery dataset, table, view and audit table of COVIDXRAY_REQUEST_LOG."""
    from .bigquery import init_bigquery
    from .settings import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if not settings.request_log.startswith("bigquery://"):
        raise click.UsageError("set COVIDXRAY_REQUEST_LOG=bigquery://project/dataset/table")
    init_bigquery(settings.request_log, retention_days=settings.retention_days)
    click.echo(f"ready: {settings.request_log}")
