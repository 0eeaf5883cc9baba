"""The API's Swagger UI, served from the package (no CDN, no inline script)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flask_swagger_ui
from flask import Blueprint, render_template, send_from_directory

SWAGGER_DIST = Path(flask_swagger_ui.__file__).resolve().parent / "dist"

bp = Blueprint("docs", __name__)


@bp.get("/api/docs")
@bp.get("/api/docs/")
def index() -> Any:
    """The Swagger UI page for `/api/openapi.json`."""
    return render_template("docs.html")


@bp.get("/api/docs/<path:name>")
def asset(name: str) -> Any:
    """Swagger UI's own scripts and styles."""
    return send_from_directory(SWAGGER_DIST, name, max_age=86400)
