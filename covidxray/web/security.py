"""Security headers and rate limits."""

from __future__ import annotations

import hashlib

from flask import Flask, Response, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from covidxray.settings import Settings
from covidxray.web import api
from covidxray.web.auth import bearer_token

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles from its scripts; its page is the only one allowed them.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
UNLIMITED = ("/healthz", "/readyz", "/metrics")


def init_app(app: Flask, settings: Settings) -> None:
    """Add security headers to every response and, when configured, rate limits."""
    app.after_request(_headers)
    if not settings.rate_limit:
        return
    limiter = Limiter(
        get_remote_address,
        app=app,
        default_limits=[settings.rate_limit],
        headers_enabled=True,
        storage_uri="memory://",
        default_limits_exempt_when=lambda: request.path in UNLIMITED,
    )
    # on top of the per-address default limit (which a blueprint limit would otherwise replace, letting
    # a client that sends a new made-up token with every request go unlimited)
    limiter.limit(settings.rate_limit, key_func=_token_key, exempt_when=_no_token, override_defaults=False)(
        api.bp
    )


def _token_key() -> str:
    """Rate-limit key of the request's token (a hash: the token itself is never kept)."""
    return "token:" + hashlib.sha256((bearer_token() or "").encode()).hexdigest()


def _no_token() -> bool:
    return bearer_token() is None or request.path in UNLIMITED


def _headers(response: Response) -> Response:
    docs = request.path.startswith("/api/docs")
    response.headers.setdefault("Content-Security-Policy", DOCS_CSP if docs else CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response
