"""The JSON API (JWT) and the health routes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for

from covidxray import service
from covidxray.backends.requestlog import PredictionRecord
from covidxray.errors import (
    ApiError,
    InvalidField,
    InvalidImage,
    MissingImage,
    NotFound,
    TooManyImages,
    UnsupportedType,
)
from covidxray.service import current_services
from covidxray.web.auth import require
from covidxray.web.clinical import parse_clinical, parse_flag
from covidxray.web.errorhandlers import error_body
from covidxray.web.openapi import openapi_document

bp = Blueprint("api", __name__)

RAW_TYPES = ("image/png", "image/jpeg", "image/gif", "application/dicom")


@bp.post("/api/v1/predict")
@bp.post("/api/prediction")
@require("predict")
def predict() -> Any:
    """Predict one image, or each image of a batch."""
    images, fields = _read_request()
    clinical = parse_clinical(fields)
    explain = parse_flag(request.args.to_dict(flat=False), "explain") or parse_flag(fields, "explain")
    subject, services = g.principal.subject, current_services()
    if len(images) == 1:
        record, _ = service.predict_upload(services, _nonempty(images[0]), clinical, subject, explain)
        return jsonify(_response(record))
    results = []
    for image in images:
        try:
            record, _ = service.predict_upload(services, _nonempty(image), clinical, subject, explain)
            results.append(_response(record))
        except ApiError as exc:
            results.append(error_body(exc))
    return jsonify({"results": results})


def _response(record: PredictionRecord) -> dict[str, Any]:
    """The contract's JSON for a record, with its heatmap's URL when it has one."""
    url = url_for("api.heatmap", request_id=record.id) if record.heatmap_uri else None
    return service.to_response(record, url)


def _read_request() -> tuple[list[bytes], dict[str, list[str]]]:
    """The uploaded images and the clinical fields, from multipart or a raw image body."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        files = request.files.getlist("image")
        legacy = request.files.getlist("payload")
        if files and legacy:
            raise InvalidField(
                "send the file in `image` or in `payload`, not both", fields={"payload": "duplicate"}
            )
        files = files or legacy
        if not files:
            raise MissingImage("send the X-ray as a multipart file named `image`")
        if len(files) > current_services().settings.max_batch:
            raise TooManyImages(f"at most {current_services().settings.max_batch} images per request")
        return [f.read() for f in files], request.form.to_dict(flat=False)
    if not (request.content_length or _raw_body()):  # an empty body, whatever its declared type
        raise MissingImage("the request has no body; send the X-ray as a multipart file named `image`")
    if mimetype in RAW_TYPES:
        return [_raw_body()], request.args.to_dict(flat=False)
    raise UnsupportedType(
        "send multipart/form-data with a file named `image`, or a raw image/png, image/jpeg "
        "or application/dicom body"
    )


def _raw_body() -> bytes:
    """The request body; one streamed without Content-Length past the upload limit is a 413."""
    data = request.get_data()
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        request.stream.read(1)  # Werkzeug stopped reading at the limit: reading on raises its 413
    return data


def _nonempty(data: bytes) -> bytes:
    if not data:
        raise InvalidImage("the uploaded file is empty")
    return data


@bp.get("/api/v1/predictions/<request_id>")
@require("read")
def get_prediction(request_id: str) -> Any:
    """One prediction, for its own subject (or an admin)."""
    record = service.find(current_services(), request_id, g.principal.subject, g.principal.allows("admin"))
    return jsonify(_response(record))


@bp.get("/api/v1/predictions/<request_id>/heatmap.png")
@require("read")
def heatmap(request_id: str) -> Any:
    """The class activation map drawn over the image, for predictions made with `explain=1`."""
    record = service.find(current_services(), request_id, g.principal.subject, g.principal.allows("admin"))
    if not record.heatmap_uri:
        raise NotFound("this prediction has no heatmap; predict with explain=1")
    response = Response(service.heatmap_png(current_services(), record), mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"  # drawn on each fetch; never changes
    return response


@bp.delete("/api/v1/predictions/<request_id>")
@require("predict")
def delete_prediction(request_id: str) -> Any:
    """Erase a prediction's record and image."""
    record = service.find(current_services(), request_id, g.principal.subject, g.principal.allows("admin"))
    service.erase(current_services(), record)
    return "", 204


@bp.get("/healthz")
def healthz() -> Any:
    """200 while the process lives."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Any:
    """200 once the local predictor is loaded; the outbox's depth and age are told, never judged."""
    predictor = current_services().predictor
    body = {"status": "ready" if predictor.ready else "loading", **predictor.status()}
    outbox = current_app.extensions.get("covidxray.outbox")
    if outbox is not None:
        body["outbox"] = outbox.state()
    if "covidxray.dicom" in current_app.extensions:  # told, never judged, like the cloud outbox
        from covidxray.dicomnode.results import describe as describe_results

        body["dicom_results"] = describe_results(current_app.extensions["covidxray.dicom"])
    return jsonify(body), (200 if predictor.ready else 503)


@bp.get("/api/openapi.json")
def openapi() -> Any:
    """The OpenAPI 3 document."""
    return jsonify(openapi_document())
