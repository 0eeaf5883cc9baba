"""The archive pipeline: match files, read them, decode through `prepare`, RunInference on the ONNX twin,
score with the serving code, write results and dead letters; counters at the end.

    patterns ─ MatchFiles ─ Reshuffle ─ ReadMatches ─ Decode ─┬─ RunInference(TwinModelHandler) ─ Score ─┐
                                                              └─ failed ─────────────── failed ───────┤
    results (once per key) ─ JSON Lines shards [─ BigQuery]       errors (once per key) ─ JSON Lines shards

A file that cannot be used becomes an error line with the API's code; an unexpected exception on one
file (a bug) becomes `internal` there too, and is logged, so one file never stops an archive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
from apache_beam.runners.runner import PipelineResult

from covidxray.archive import progress
from covidxray.archive.handler import NAMESPACE, TwinModelHandler
from covidxray.archive.records import Decoded, Scoring, decode, failure, score
from covidxray.archive.sinks import OncePerKey, WriteShards
from covidxray.errors import ApiError, InvalidImage
from covidxray.predictors.gate import open_guard
from covidxray.predictors.runtime import DEFAULT_MODEL, ModelInfo

log = logging.getLogger(__name__)

FAILED = "failed"


@dataclass(frozen=True)
class ArchiveJob:
    """What to score, with which model and settings, and where to write."""

    patterns: tuple[str, ...]
    output: str
    model_path: Path | None = None  # None: the shipped model, wherever each worker has it
    runtime: str | None = None  # None: the twin the metadata serves
    ood: str = "refuse"
    uncertain_below: float = 0.6
    max_pixels: int = 50_000_000
    shards: int = 4
    max_batch_size: int = 16
    bigquery: str | None = None  # PROJECT.DATASET.TABLE: the results there too, one row per key
    beam_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def model(self) -> Path:
        """The model file on this machine."""
        return self.model_path or DEFAULT_MODEL


class DecodeFile(beam.DoFn):  # type: ignore[misc]
    """A matched file → (its description, the model's input tensor), or a failure line."""

    def __init__(self, size: int, max_pixels: int, model: dict[str, str]):
        self.size, self.max_pixels, self.model = size, max_pixels, model
        self.failed = Metrics.counter(NAMESPACE, "images_failed")

    def process(self, readable: fileio.ReadableFile) -> Iterator[Any]:
        path = readable.metadata.path
        try:
            yield decode(path, _read(readable), self.size, self.max_pixels)
        except Exception as exc:  # an ApiError, or a bug that must not stop the archive
            self.failed.inc()
            progress.advance()
            yield beam.pvalue.TaggedOutput(FAILED, failure(path, _as_api_error(exc), self.model))


def _read(readable: fileio.ReadableFile) -> bytes:
    """The file's bytes; InvalidImage when it cannot be read."""
    try:
        return readable.read()  # type: ignore[no-any-return]
    except OSError as exc:
        raise InvalidImage(f"the file could not be read ({type(exc).__name__})") from exc


def _as_api_error(exc: Exception) -> ApiError:
    """`exc` itself when it is for the client; else logged, and `internal` (as the API answers a bug)."""
    if isinstance(exc, ApiError):
        return exc
    log.error("archive file failed unexpectedly", exc_info=exc)
    return ApiError()


class ScoreImage(beam.DoFn):  # type: ignore[misc]
    """(description, (logits, the gate's summary)) → the result line, or a failure line (gate refusals)."""

    def __init__(self, model_path: str | None, ood: str, uncertain_below: float):
        self.model_path, self.ood, self.uncertain_below = model_path, ood, uncertain_below
        self.scored = Metrics.counter(NAMESPACE, "images_scored")
        self.failed = Metrics.counter(NAMESPACE, "images_failed")

    def setup(self) -> None:
        path = Path(self.model_path) if self.model_path else DEFAULT_MODEL
        guard = open_guard(self.ood, path)
        self.scoring = Scoring(ModelInfo.load(path.with_suffix(".json")), guard, self.uncertain_below)

    def process(self, element: tuple[Decoded, PredictionResult]) -> Iterator[Any]:
        decoded, result = element
        logits, summary = result.inference
        progress.advance()
        try:
            line = score(decoded, np.asarray(logits), np.asarray(summary), self.scoring)
        except Exception as exc:  # the gate's refusal, or a bug: never stops the archive
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(
                FAILED, failure(decoded.path, _as_api_error(exc), self.scoring.model)
            )
            return
        self.scored.inc()
        Metrics.counter(NAMESPACE, f"class_{line['predicted_class']}").inc()
        yield line


def scoring_of(job: ArchiveJob) -> Scoring:
    """The model's identity, its gate and the threshold, loaded on the launcher (errors surface here)."""
    return Scoring(
        ModelInfo.load(job.model.with_suffix(".json")),
        open_guard(job.ood, job.model),
        job.uncertain_below,
    )


def build(pipeline: beam.Pipeline, job: ArchiveJob, scoring: Scoring) -> None:
    """Add the archive's transforms to `pipeline`."""
    matched = [
        pipeline | f"Match {i}" >> fileio.MatchFiles(pattern) for i, pattern in enumerate(job.patterns)
    ] | "All files" >> beam.Flatten()
    decoded = (
        matched
        | "Spread" >> beam.Reshuffle()  # the files of one pattern over all workers, not one bundle
        | "Read" >> fileio.ReadMatches()
        | "Decode"
        >> beam.ParDo(DecodeFile(scoring.info.input_size, job.max_pixels, scoring.model)).with_outputs(
            FAILED, main="decoded"
        )
    )
    handler = KeyedModelHandler(
        TwinModelHandler(_text(job.model_path), job.runtime, max_batch_size=job.max_batch_size)
    )
    scored = (
        decoded.decoded
        | "Infer" >> RunInference(handler)
        | "Score"
        >> beam.ParDo(ScoreImage(_text(job.model_path), job.ood, job.uncertain_below)).with_outputs(
            FAILED, main="results"
        )
    )
    results = scored.results | "Results once" >> OncePerKey()
    _ = results | "Write results" >> WriteShards(job.output, "results", job.shards)
    if job.bigquery:
        from covidxray.archive.bigquery import WriteNewRows

        _ = results | "Lines" >> beam.Values() | "BigQuery" >> WriteNewRows(job.bigquery)
    failures = (decoded[FAILED], scored[FAILED]) | "Failures" >> beam.Flatten()
    _ = (
        failures
        | "Errors once" >> OncePerKey()
        | "Write errors" >> WriteShards(job.output, "errors", job.shards)
    )


def _text(path: Path | None) -> str | None:
    return str(path) if path else None


def options_of(job: ArchiveJob) -> PipelineOptions:
    """Beam's options from the passed-through arguments; the DoFns travel pickled with their module."""
    options = PipelineOptions(list(job.beam_args))
    options.view_as(SetupOptions).save_main_session = False
    return options


def counters(result: PipelineResult) -> dict[str, int] | None:
    """The pipeline's counters by name (committed where the runner has them, else attempted); None from
    a runner that keeps none (Dataflow's --dry_run)."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except NotImplementedError:
        return None
    totals: dict[str, int] = {}
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def runner_of(name: str, options: PipelineOptions) -> Any:
    """The runner: for `DirectRunner`, Beam's FnApiRunner (the DirectRunner's batch engine, which honours
    --direct_num_workers and --direct_running_mode) rather than Prism, which would download a binary."""
    if name != "DirectRunner":
        return name
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def run(job: ArchiveJob, runner: str = "DirectRunner", total: int | None = None) -> dict[str, int] | None:
    """Run the archive pipeline to its end; return its counters. `total` files: a bar while it runs."""
    scoring = scoring_of(job)
    options = options_of(job)
    pipeline = beam.Pipeline(runner=runner_of(runner, options), options=options)
    build(pipeline, job, scoring)
    with progress.shown(total if runner == "DirectRunner" else None):
        result = pipeline.run()
        result.wait_until_finish()
    return counters(result)
