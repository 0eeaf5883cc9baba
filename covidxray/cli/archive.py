"""Scoring a whole archive on Apache Beam: score-archive (runs in .venv-beam; Beam is imported lazily)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import click

from covidxray.settings import OOD_MODES

RUNNERS = ("DirectRunner", "DataflowRunner")
NO_BEAM = (
    "score-archive runs on Apache Beam, which lives in its own environment (its pins conflict with the "
    "service's): run `make beam-install`, then `.venv-beam/bin/covidxray score-archive ...`"
)


@click.command("score-archive", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--input", "patterns", multiple=True, required=True, help="a local glob or gs:// pattern (repeatable)"
)
@click.option("--output", "prefix", required=True, help="local or gs:// prefix of the JSON Lines shards")
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="the .keras model, at this path on every worker too (default: the shipped one, each worker's own)",
)
@click.option(
    "--runtime",
    "runtime_name",
    type=click.Choice(["onnx", "onnx-float", "onnx-int8"]),
    default="onnx",
    show_default=True,
    help="onnx: the served twin; onnx-float, onnx-int8: that twin",
)
@click.option("--runner", type=click.Choice(RUNNERS), default="DirectRunner", show_default=True)
@click.option("--shards", type=click.IntRange(1, 10_000), default=4, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(1, 1024), default=16, show_default=True)
@click.option(
    "--bigquery",
    "table_id",
    default=None,
    metavar="PROJECT.DATASET.TABLE",
    help="also write the results there, one row per image and model version (created if missing)",
)
@click.pass_context
def score_archive(
    ctx: click.Context,
    patterns: tuple[str, ...],
    prefix: str,
    model_path: Path | None,
    runtime_name: str,
    runner: str,
    shards: int,
    max_batch_size: int,
    table_id: str | None,
) -> None:
    """Score every file matching --input into PREFIX-results-*.jsonl and PREFIX-errors-*.jsonl.

    Options this command does not know (--project=..., --region=..., --direct_num_workers=2, ...) go to
    Beam. Files that cannot be scored go to the errors, with the API's error codes; the command then
    still exits 0 and says how many failed.
    """
    if importlib.util.find_spec("apache_beam") is None:
        raise click.ClickException(NO_BEAM)
    from covidxray.archive.pipeline import ArchiveJob, run
    from covidxray.archive.sinks import remove_stale_shards

    # the bar's total on a local run; elsewhere one file per pattern is enough (no listing of millions)
    total = _count_matches(patterns, None if runner == "DirectRunner" else 1)
    ood = _ood_mode()
    job = ArchiveJob(
        patterns=patterns,
        output=prefix,
        model_path=_checked_model(model_path, runtime_name, ood),  # None: the shipped one
        runtime=None if runtime_name == "onnx" else runtime_name,
        ood=ood,
        uncertain_below=float(os.environ.get("COVIDXRAY_UNCERTAIN_BELOW", "0.6")),
        max_pixels=int(os.environ.get("COVIDXRAY_MAX_PIXELS", "50000000")),
        shards=shards,
        max_batch_size=max_batch_size,
        beam_args=tuple(ctx.args),
        bigquery=table_id,
    )
    if not _dry_run(job.beam_args):  # a dry run (Dataflow's --dry_run) builds the job, touches nothing
        if table_id:
            _ensure_table(table_id)
        for path in remove_stale_shards(prefix, ("results", "errors"), shards):
            click.echo(f"removed {path} (an earlier run's shard)", err=True)
    totals = run(job, runner, total)
    _report(totals, prefix)


def _dry_run(beam_args: tuple[str, ...]) -> bool:
    """Whether Beam's options ask for a dry run (`--dry_run=True`)."""
    from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

    return bool(PipelineOptions(list(beam_args)).view_as(TestOptions).dry_run)


def _count_matches(patterns: tuple[str, ...], limit: int | None = None) -> int:
    """The number of files the patterns match (up to `limit` each); a usage error (exit 2) for a pattern
    that matches none."""
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    found: set[str] = set()
    for pattern in patterns:
        try:
            (result,) = FileSystems.match([pattern], None if limit is None else [limit])
            paths = {m.path for m in result.metadata_list if not os.path.isdir(m.path)}
        except BeamIOError:
            paths = set()
        if not paths:
            raise click.UsageError(f"--input {pattern!r} matches no file")
        found |= paths
    return len(found)


def _checked_model(model_path: Path | None, runtime_name: str, ood: str) -> Path | None:
    """The model file, loaded once here with its gate so that an unreadable one fails before any worker
    starts."""
    from covidxray.predictors.gate import open_guard
    from covidxray.predictors.runtime import DEFAULT_MODEL, load_runtime

    path = model_path or DEFAULT_MODEL
    try:
        load_runtime(path, None if runtime_name == "onnx" else runtime_name)
        open_guard(ood, path)
    except Exception as exc:  # a missing, unreadable or corrupt model: every cause is the user's to fix
        raise click.BadParameter(f"cannot load the model at {path}: {exc}", param_hint="--model") from exc
    return model_path


def _ensure_table(table_id: str) -> None:
    """Create the BigQuery table if missing; a clear error (before the pipeline) when that fails."""
    from google.api_core.exceptions import GoogleAPIError

    from covidxray.archive.bigquery import ensure_table

    try:
        ensure_table(table_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bigquery") from exc
    except GoogleAPIError as exc:
        raise click.ClickException(f"cannot create or reach the BigQuery table {table_id}: {exc}") from exc


def _ood_mode() -> str:
    """COVIDXRAY_OOD, as `covidxray predict` reads it."""
    mode = os.environ.get("COVIDXRAY_OOD", "refuse").lower()
    if mode not in OOD_MODES:
        raise click.UsageError(f"COVIDXRAY_OOD must be one of {', '.join(OOD_MODES)}, got {mode!r}")
    return mode


def _report(totals: dict[str, int] | None, prefix: str) -> None:
    """The counters, on stderr: images scored (by class) and failed."""
    if totals is None:
        click.echo("the runner reports no counters (a dry run scores nothing)", err=True)
        return
    classes = sorted((k.removeprefix("class_"), v) for k, v in totals.items() if k.startswith("class_"))
    by_class = ", ".join(f"{label} {count}" for label, count in classes)
    click.echo(f"scored {totals.get('images_scored', 0)} images ({by_class or 'none'})", err=True)
    failed = totals.get("images_failed", 0)
    where = f": see {prefix}-errors-*.jsonl" if failed else ""
    click.echo(f"{failed} failed{where}", err=True)
    click.echo(f"results: {prefix}-results-*.jsonl", err=True)
