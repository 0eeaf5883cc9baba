"""One error shape: JSON for API clients, a readable page for browsers."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, make_response, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from covidxray.errors import (
    ApiError,
    CsrfFailed,
    InvalidField,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    TooLarge,
)

log = logging.getLogger(__name__)

_HTTP = {404: NotFound, 405: MethodNotAllowed, 413: TooLarge, 429: RateLimited}


def wants_json() -> bool:
    """True for API routes and for clients that prefer JSON over HTML."""
    if request.path.startswith(("/api/", "/dicomweb/")):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return (
        best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]
    )


def error_body(exc: ApiError) -> dict[str, Any]:
    """`{"error": {"code", "message"}, "id"?}` for `exc`."""
    body: dict[str, Any] = {"error": {"code": exc.code, "message": exc.message}}
    if isinstance(exc, InvalidField) and exc.fields:
        body["error"]["fields"] = exc.fields
    if exc.request_id:
        body["id"] = exc.request_id
    return body


def error_response(exc: ApiError) -> Any:
    """Render `exc` as JSON or as an HTML page, with its status and headers."""
    if wants_json():
        response = jsonify(error_body(exc))
    else:
        response = make_response(render_template("error.html", error=exc))
    response.status_code = exc.status
    response.headers.update(exc.headers)
    return response


def _from_http(exc: HTTPException) -> Any:
    cls = _HTTP.get(exc.code or 500)
    if cls is not None:
        return error_response(cls())
    if exc.code == 400:
        return error_response(InvalidField("the request could not be parsed"))
    error = ApiError(exc.description)
    error.status, error.code = exc.code or 500, (exc.name or "error").lower().replace(" ", "_")
    return error_response(error)


def _unexpected(exc: Exception) -> Any:
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(ApiError())


def init_app(app: Flask) -> None:
    """Register the handlers."""
    app.register_error_handler(ApiError, error_response)
    app.register_error_handler(CSRFError, lambda exc: error_response(CsrfFailed()))
    app.register_error_handler(HTTPException, _from_http)
    app.register_error_handler(Exception, _unexpected)
