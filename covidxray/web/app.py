"""The application factory."""

from __future__ import annotations

import logging
import sys

from flask import Flask
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from covidxray.backends.buffered import wrap_cloud_backends
from covidxray.backends.registry import open_image_store, open_request_log
from covidxray.predictors.base import Predictor
from covidxray.predictors.factory import make_predictor
from covidxray.predictors.gate import Guard, open_guard
from covidxray.retention import start_sweeper
from covidxray.service import Services
from covidxray.settings import Settings
from covidxray.web import api, dicomweb, docs, errorhandlers, history, metrics, pages, security

log = logging.getLogger(__name__)


def create_app(
    backend: str = "keras", settings: Settings | None = None, predictor: Predictor | None = None
) -> Flask:
    """Build the service for `backend` (`keras` or `automl`); load its predictor once.

    Args:
        backend: which predictor the service plugs in.
        settings: defaults to `Settings.from_env()`.
        predictor: an already built predictor (tests); defaults to the backend's own.
    """
    configure_logging()
    settings = (settings or Settings.from_env()).validated()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_upload_mb * 1024 * 1024,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.production,
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies
        )
    predictor = predictor or make_predictor(backend, settings)
    predictor.load()
    images, requests_log, outbox = wrap_cloud_backends(
        open_image_store(settings.image_store), open_request_log(settings.request_log), settings
    )
    services = Services(
        settings=settings,
        predictor=predictor,
        images=images,
        log=requests_log,
        guard=open_gate(settings, predictor),
    )
    app.extensions["covidxray"] = services
    if outbox is not None:  # cloud backends: writes go through the local outbox, shipped in the background
        app.extensions["covidxray.outbox"] = outbox
        outbox.start()
    if settings.dicom_destination:  # SR and SC back to the PACS (highdicom is imported only then)
        from covidxray.dicomnode.results import ResultSender

        sender = ResultSender(settings)
        app.extensions["covidxray.dicom"] = sender
        sender.start()
    if settings.retention_days is not None:
        start_sweeper(services, settings.retention_days)
    csrf = CSRFProtect(app)
    csrf.exempt(api.bp)
    csrf.exempt(dicomweb.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(dicomweb.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(history.bp)
    errorhandlers.init_app(app)
    security.init_app(app, settings)
    metrics.init_app(app)
    log.info("service ready", extra={"backend": backend, "env": settings.env})
    return app


def open_gate(settings: Settings, predictor: Predictor) -> Guard | None:
    """The OOD gate of the served model (or, for AutoML, of the shipped one, which it then runs itself)."""
    from covidxray.predictors.runtime import DEFAULT_MODEL, load_runtime

    if settings.ood == "off":
        return None
    path = getattr(predictor, "model_path", None) or settings.model or DEFAULT_MODEL
    runtime = (
        None if predictor.gives_features else load_runtime(path, settings.runtime, settings.runtime_threads)
    )
    return open_guard(settings.ood, path, runtime)


def configure_logging() -> None:
    """Log to stdout once, unless the host (gunicorn, pytest) configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
