"""The browser pages: upload form and result page (CSRF-protected, no token needed)."""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from covidxray import service
from covidxray.backends.requestlog import PredictionRecord
from covidxray.errors import ApiError, InvalidField, MissingImage, NotFound
from covidxray.labels import LABELS, UNCERTAIN
from covidxray.service import current_services
from covidxray.web.clinical import parse_clinical, parse_flag

bp = Blueprint("web", __name__)

MAX_SESSION_RESULTS = 50
FLAG_LABELS = {
    "trouble_breathing": "Trouble breathing",
    "chest_pain": "Chest pain",
    "tiredness": "Tiredness",
    "bluish_color": "Bluish lips or face",
    "runny_nose": "Runny nose",
    "cough": "Cough",
    "fever": "Fever",
}


def _form(errors: dict[str, str] | None = None, message: str | None = None, status: int = 200) -> Any:
    values = request.form if request.method == "POST" else {}
    page = render_template(
        "index.html", errors=errors or {}, message=message, values=values, flags=FLAG_LABELS
    )
    return page, status


@bp.get("/")
def index() -> Any:
    """The upload form."""
    return _form()


@bp.post("/")
def submit() -> Any:
    """Predict the uploaded X-ray and redirect to its result page."""
    errors: dict[str, str] = {}
    form = request.form.to_dict(flat=False)
    try:
        clinical = parse_clinical(form)
        explain = parse_flag(form, "explain")
    except InvalidField as exc:
        clinical, explain, errors = {}, False, dict(exc.fields)
    upload = request.files.get("image")
    data = upload.read() if upload is not None else b""
    if not data:
        errors["image"] = MissingImage("Choose an X-ray image to upload.").message
    if errors:
        return _form(errors, "Please correct the fields marked below.", 400)
    try:
        record, _ = service.predict_upload(current_services(), data, clinical, explain=explain)
    except ApiError as exc:
        return _form({"image": exc.message}, exc.message, exc.status)
    session["results"] = ([record.id] + session.get("results", []))[:MAX_SESSION_RESULTS]
    return redirect(url_for("web.result", request_id=record.id), code=303)


def _own_record(request_id: str) -> PredictionRecord:
    if request_id not in session.get("results", []):
        raise NotFound("This result does not exist or belongs to another browser session.")
    record = current_services().log.get(request_id)
    if record is None:
        raise NotFound("This result has been erased.")
    return record


@bp.get("/results/<request_id>")
def result(request_id: str) -> Any:
    """The result page, for the browser session that submitted the image."""
    record = _own_record(request_id)
    return render_template(
        "result.html",
        record=record,
        labels=LABELS,
        uncertain=record.predicted_class == UNCERTAIN,
    )


@bp.get("/results/<request_id>/image")
def result_image(request_id: str) -> Response:
    """The uploaded image, for the same browser session."""
    record = _own_record(request_id)
    if record.format == "dicom":
        raise NotFound("DICOM images are not displayed in the browser.")
    return _private(current_services().images.get(record.image_uri), service.CONTENT_TYPES[record.format])


@bp.get("/results/<request_id>/heatmap.png")
def result_heatmap(request_id: str) -> Response:
    """The heatmap drawn over the image, for the same browser session."""
    record = _own_record(request_id)
    if not record.heatmap_uri:
        raise NotFound("This result has no heatmap.")
    return _private(service.heatmap_png(current_services(), record), "image/png")


def _private(data: bytes, mimetype: str) -> Response:
    response = Response(data, mimetype=mimetype)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
