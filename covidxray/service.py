"""The prediction use case as plain functions, shared by the browser form and the API."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from uuid6 import uuid7

from covidxray.backends.requestlog import PredictionRecord, RequestLog
from covidxray.backends.storage import ImageStore
from covidxray.errors import ApiError, BackendUnavailable, NotChestRadiograph, NotFound
from covidxray.imaging import clean_pixels
from covidxray.imaging.heatmap import map_png, overlay_png, stored_map
from covidxray.imaging.prepare import Prepared, prepare
from covidxray.predictors.base import Outcome, Predictor
from covidxray.predictors.calibration import decide
from covidxray.predictors.gate import Guard, Verdict
from covidxray.settings import Settings

PREDICTIONS = Counter("covidxray_predictions_total", "Predictions by class", ["backend", "predicted_class"])

log = logging.getLogger(__name__)

EXTENSIONS = {"png": "png", "jpeg": "jpg", "gif": "gif", "dicom": "dcm"}
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "dicom": "application/dicom"}


@dataclass
class Services:
    """What a request needs: settings, the predictor, the image store and the request log."""

    settings: Settings
    predictor: Predictor
    images: ImageStore
    log: RequestLog
    guard: Guard | None = None  # the gate for non-frontal inputs (None: COVIDXRAY_OOD=off)


def current_services() -> Services:
    """The services of the app handling the current request."""
    from flask import current_app

    return current_app.extensions["covidxray"]  # type: ignore[no-any-return]


def predict_upload(
    services: Services,
    data: bytes,
    clinical: dict[str, Any],
    subject: str | None = None,
    explain: bool = False,
    source: str = "upload",
) -> tuple[PredictionRecord, Prepared]:
    """Check, predict, store and log one upload (`source`: how the image came); return its record and
    the decoded film (burnt-in text blacked out, as stored), for drawing its heatmap without decoding
    it again.

    Undecodable input raises before anything is stored. An image that the gate refuses, and a
    backend failure, keep the image and a record (status `refused` or `backend_unavailable`),
    then raise with the request id.
    """
    started = time.perf_counter()
    predictor = services.predictor
    prepared = prepare(data, predictor.input_size, max_pixels=services.settings.max_pixels)
    kept = prepared.stored if prepared.stored is not None else data  # DICOM: the de-identified copy
    text = clean_pixels.screen(prepared, kept, services.settings.burned_in)  # refuse: raises, nothing kept
    request_id = str(uuid7())
    created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    outcome, verdict, status, error = _gate_and_predict(services, prepared, data, explain)
    if text is not None:  # redact: blacked out in the stored copy and the heatmap's image, after the model
        kept = clean_pixels.redact(prepared, kept, text)
    stored = services.images.put(
        kept, EXTENSIONS[prepared.format], content_type=CONTENT_TYPES[prepared.format], request_id=request_id
    )
    record = PredictionRecord(
        id=request_id,
        created_at=created_at,
        backend=predictor.backend,
        model_name=predictor.model_name,
        model_version=predictor.model_version,
        status=status,
        image_uri=stored.uri,
        sha256=stored.sha256,
        format=prepared.format,
        size_bytes=len(kept),
        width=prepared.width,
        height=prepared.height,
        latency_ms=0.0,
        subject=subject,
        warnings=prepared.warnings + (outcome.warnings if outcome else []),
        clinical=clinical,
        # the source study's UID is kept only for what came from a PACS (the FHIR ImagingStudy link)
        dicom={k: v for k, v in prepared.dicom.items() if k != "study_uid" or source != "upload"},
        source=source,
    )
    if verdict is not None:
        record.ood_score, record.ood_threshold = round(verdict.score, 4), round(verdict.threshold, 4)
        if not verdict.passed:
            record.warnings.append(verdict.message())
    if outcome is not None:
        record.probabilities = outcome.probabilities
        flagged = verdict is not None and not verdict.passed  # warn: scored, but not called a finding
        record.predicted_class, record.score = decide(
            outcome.probabilities, services.settings.uncertain_below, flagged
        )
        PREDICTIONS.labels(backend=predictor.backend, predicted_class=record.predicted_class).inc()
        if outcome.heatmap is not None:  # the map only: heatmap_png draws it when it is fetched
            heatmap = services.images.put(
                map_png(outcome.heatmap), "png", content_type="image/png", request_id=request_id
            )
            record.heatmap_uri = heatmap.uri
        elif explain:
            record.warnings.append(f"heatmaps are not available for the {predictor.backend} backend")
    record.latency_ms = round((time.perf_counter() - started) * 1000, 2)
    services.log.record(record)
    if error is not None:
        error.request_id = request_id
        raise error
    return record, prepared


def _gate_and_predict(
    services: Services, prepared: Prepared, data: bytes, explain: bool
) -> tuple[Outcome | None, Verdict | None, str, ApiError | None]:
    """Ask the gate and the predictor: (outcome, verdict, status, error to raise once recorded).

    A backend that yields no features (AutoML) is asked only after the gate passed the image
    (or under `warn`); our own model's forward pass feeds the gate its feature maps.
    """
    predictor, guard = services.predictor, services.guard
    verdict = guard.check(prepared) if guard and guard.needs_features else None
    outcome: Outcome | None = None
    if verdict is None or verdict.passed or (guard is not None and guard.mode == "warn"):
        try:
            outcome = predictor.predict(prepared, data, explain=explain)
        except BackendUnavailable as exc:
            return None, verdict, exc.code, exc
    if guard is not None and verdict is None and outcome is not None:
        verdict = guard.check(prepared, outcome.gate_input)
    if verdict is not None and not verdict.passed and guard is not None and guard.mode == "refuse":
        return None, verdict, "refused", NotChestRadiograph(verdict.message())
    return outcome, verdict, "ok", None


def find(services: Services, request_id: str, subject: str | None, admin: bool = False) -> PredictionRecord:
    """The record with `request_id`, if `subject` may see it (else NotFound, revealing nothing)."""
    record = services.log.get(request_id)
    if record is None or not (admin or record.subject == subject):
        raise NotFound("no prediction with this id")
    return record


def heatmap_png(services: Services, record: PredictionRecord, film: Prepared | None = None) -> bytes:
    """The record's class activation map drawn over its film, as PNG.

    Prediction stores only the map (a few hundred bytes); drawing it over the stored copy (with any
    burnt-in text already blacked out) happens here, for the answers whose heatmap is looked at.
    `film`: the record's film as `predict_upload` returned it, to draw without decoding the copy again.
    """
    if not record.heatmap_uri:
        raise NotFound("this prediction has no heatmap")
    stored = services.images.get(record.heatmap_uri)
    cam = stored_map(stored)
    if cam is None:  # an overlay drawn at prediction time by an earlier release
        return stored
    if film is None:  # accepted once, so a lower pixel limit set since does not refuse it now
        limit = max(services.settings.max_pixels, record.width * record.height)
        film = prepare(services.images.get(record.image_uri), services.predictor.input_size, max_pixels=limit)
    return overlay_png(film.image, cam, (film.width, film.height))


def erase(services: Services, record: PredictionRecord) -> None:
    """Erase a record, its image and heatmap (each stays while another record shares its bytes)."""
    services.log.delete(record.id)
    for uri in (record.image_uri, record.heatmap_uri):
        if uri and services.log.count_image(uri) == 0:
            services.images.delete(uri)


def to_response(record: PredictionRecord, heatmap_url: str | None = None) -> dict[str, Any]:
    """The contract's JSON shape of one prediction."""
    return {
        "id": record.id,
        "created_at": record.created_at[:19] + "Z",
        "backend": record.backend,
        "model": {"name": record.model_name, "version": record.model_version},
        "status": record.status,
        "predicted_class": record.predicted_class,
        "score": record.score,
        "probabilities": record.probabilities,
        "image": {
            "sha256": record.sha256,
            "uri": record.image_uri,
            "width": record.width,
            "height": record.height,
            "format": record.format,
        },
        "clinical": record.clinical,
        "ood_score": record.ood_score,
        "ood_threshold": record.ood_threshold,
        "heatmap_url": heatmap_url,
        "warnings": record.warnings,
        "latency_ms": record.latency_ms,
    }
