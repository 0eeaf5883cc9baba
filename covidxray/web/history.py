"""`/history`: recent predictions for an admin (password login, session cookie, CSRF), with CSV export."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from PIL import Image
from werkzeug.security import check_password_hash

from covidxray.backends.requestlog import CLINICAL_FIELDS, HistoryQuery, PredictionRecord
from covidxray.errors import InvalidField, NotFound
from covidxray.imaging.prepare import prepare
from covidxray.labels import LABELS, UNCERTAIN
from covidxray.service import current_services

bp = Blueprint("history", __name__)

THUMB_SIDE = 96
CSV_COLUMNS = (
    "id", "created_at", "backend", "model_name", "model_version", "status", "predicted_class", "score",
    *(f"p_{label}" for label in LABELS), "format", "width", "height", "sha256", "latency_ms", "subject",
    *CLINICAL_FIELDS,
)  # fmt: skip


@bp.before_request
def _enabled() -> Any:
    if not current_services().settings.admin_password_hash:
        raise NotFound("The history is disabled on this service.")
    if request.endpoint not in ("history.login", "history.do_login") and not session.get("admin"):
        return redirect(url_for("history.login"), code=303)
    return None


@bp.get("/history/login")
def login() -> Any:
    """The admin login form."""
    return render_template("login.html", failed=False)


@bp.post("/history/login")
def do_login() -> Any:
    """Check the admin password and open an admin session."""
    services = current_services()
    if not check_password_hash(services.settings.admin_password_hash or "", request.form.get("password", "")):
        services.log.audit("anonymous", "login_failed", request.remote_addr or "")
        return render_template("login.html", failed=True), 401
    session.clear()
    session["admin"] = True
    services.log.audit("admin", "login", request.remote_addr or "")
    return redirect(url_for("history.index"), code=303)


@bp.post("/history/logout")
def logout() -> Any:
    """Close the admin session."""
    session.pop("admin", None)
    return redirect(url_for("history.login"), code=303)


def _query(limit: int = 200) -> HistoryQuery:
    """The filters of the request: class, from and to (YYYY-MM-DD, inclusive)."""
    chosen = request.args.get("class") or None
    if chosen not in (None, *LABELS, UNCERTAIN):
        raise InvalidField("unknown class", fields={"class": "choose a class from the list"})
    try:
        since = date.fromisoformat(request.args["from"]).isoformat() if request.args.get("from") else None
        to = request.args.get("to")
        until = (date.fromisoformat(to) + timedelta(days=1)).isoformat() if to else None
    except ValueError as exc:
        raise InvalidField("dates must look like 2026-11-25", fields={"date": "use YYYY-MM-DD"}) from exc
    return HistoryQuery(predicted_class=chosen, since=since, until=until, limit=limit)


@bp.get("/history")
def index() -> Any:
    """Recent predictions, filtered."""
    query = _query()
    records = current_services().log.search(query)
    current_services().log.audit("admin", "view", _describe(query))
    return render_template("history.html", records=records, args=request.args, labels=(*LABELS, UNCERTAIN))


@bp.get("/history.csv")
def export() -> Response:
    """The filtered predictions as CSV."""
    query = _query(limit=100_000)
    records = current_services().log.search(query)
    current_services().log.audit("admin", "export", _describe(query))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_row(record) for record in records)
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="covidxray-history.csv"'
    return response


@bp.get("/history/<request_id>/thumb.png")
def thumbnail(request_id: str) -> Response:
    """A small grayscale thumbnail of a stored image."""
    services = current_services()
    record = services.log.get(request_id)
    if record is None:
        raise NotFound()
    image = prepare(services.images.get(record.image_uri), THUMB_SIDE).image
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    thumb.save(out, "PNG")
    response = Response(out.getvalue(), mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def _describe(query: HistoryQuery) -> str:
    return f"class={query.predicted_class or '*'} since={query.since or '*'} until={query.until or '*'}"


def _row(record: PredictionRecord) -> list[Any]:
    probs = record.probabilities or {}
    return [
        record.id, record.created_at, record.backend, record.model_name, record.model_version, record.status,
        record.predicted_class, record.score, *(probs.get(label) for label in LABELS), record.format,
        record.width, record.height, record.sha256, record.latency_ms, record.subject,
        *(record.clinical.get(name) for name in CLINICAL_FIELDS),
    ]  # fmt: skip
