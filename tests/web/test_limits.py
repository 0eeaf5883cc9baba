"""Limits and production hardening, where test_security.py and test_web.py do not already cover them.

Rate limits per token and per client address (and which `X-Forwarded-For` hop counts), the
decoded-pixel cap, security headers on error answers, CSRF on the form, a generic 500 without
a traceback in production, and no secret or token in any log line.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import replace
from typing import Any

import pytest
from PIL import ImageFile

from covidxray import create_app
from covidxray.imaging.prepare import Prepared
from covidxray.predictors.base import Outcome, Predictor
from covidxray.settings import Settings
from covidxray.web.auth import issue_token
from tests.helpers import image_bytes

GENERIC_500 = {"error": {"code": "internal", "message": "internal error"}}


def upload(data: bytes | None = None) -> dict[str, Any]:
    return {"data": {"image": (io.BytesIO(data or image_bytes((256, 256))), "x.png")}}


def bearer(settings: Settings, subject: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(settings, subject)}"}


def csrf(client) -> str:
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Rate limits


@pytest.fixture
def limited(settings, predictor):
    """The service with 3 requests a minute per token and per client address."""
    return create_app(settings=replace(settings, rate_limit="3/minute"), predictor=predictor)


@pytest.fixture
def behind_proxy(settings, predictor):
    """The same, behind one trusted proxy hop."""
    return create_app(
        settings=replace(settings, rate_limit="3/minute", trusted_proxies=1), predictor=predictor
    )


def test_one_token_is_limited_across_client_addresses(limited, settings):
    client, headers = limited.test_client(), bearer(settings)
    statuses = [
        client.post(
            "/api/v1/predict", headers=headers, environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}, **upload()
        ).status_code
        for i in range(4)
    ]
    assert statuses == [200, 200, 200, 429]


def test_one_client_address_is_limited_across_tokens(limited, settings):
    client = limited.test_client()
    answers = [
        client.post("/api/v1/predict", headers=bearer(settings, f"user-{i}"), **upload()) for i in range(4)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[-1].get_json()["error"]["code"] == "rate_limited"
    assert int(answers[-1].headers["Retry-After"]) > 0


def test_made_up_tokens_do_not_escape_the_address_limit(limited):
    client = limited.test_client()
    statuses = [
        client.post(
            "/api/v1/predict", headers={"Authorization": f"Bearer made-up-{i}"}, **upload()
        ).status_code
        for i in range(4)
    ]
    assert statuses == [401, 401, 401, 429]


def test_pages_without_a_token_are_limited_per_address(limited):
    client = limited.test_client()
    first = [client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code for _ in range(4)]
    other = client.get("/", environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert first == [200, 200, 200, 429] and other.status_code == 200


def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies(limited):
    client = limited.test_client()
    statuses = [client.get("/", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_forwarded_for_is_honoured_through_one_trusted_hop(behind_proxy):
    client = behind_proxy.test_client()
    # each client behind the proxy has its own budget...
    spread = [client.get("/", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(4)]
    assert spread == [200] * 4
    # ...and only the hop the trusted proxy appended counts: a client cannot vary what comes before it
    spoofed = [
        client.get("/", headers={"X-Forwarded-For": f"203.0.113.{i}, 198.51.100.77"}).status_code
        for i in range(4)
    ]
    assert spoofed == [200, 200, 200, 429]


def test_rate_limited_answers_for_the_browser_are_a_page(limited):
    client = limited.test_client()
    for _ in range(3):
        client.get("/")
    answer = client.get("/", headers={"Accept": "text/html"})
    assert answer.status_code == 429 and answer.mimetype == "text/html"
    assert int(answer.headers["Retry-After"]) > 0


# ---------------------------------------------------------------------------------------------
# Decoded-pixel cap


@pytest.fixture
def capped(tmp_path, predictor, monkeypatch):
    """The service with COVIDXRAY_MAX_PIXELS=100000 read from the environment."""
    monkeypatch.setenv("COVIDXRAY_MAX_PIXELS", "100000")
    settings = Settings.from_env(
        ood="off",  # generated pictures; the gate is tests/predictors/test_ood.py's
        data_dir=tmp_path,
        jwt_keys={"": "k" * 40},
        secret_key="s" * 40,
        image_store=f"file://{tmp_path / 'uploads'}",
        request_log=f"sqlite:///{tmp_path / 'requests.sqlite3'}",
    )
    assert settings.max_pixels == 100_000
    return create_app(settings=settings, predictor=predictor), settings


@pytest.mark.parametrize(
    ("size", "fmt", "status"),
    [
        ((316, 316), "PNG", 200),
        ((317, 317), "PNG", 400),
        ((400, 250), "JPEG", 200),
        ((400, 251), "JPEG", 400),
    ],
)
def test_pixel_cap_from_the_environment(capped, stored, size, fmt, status):
    app, settings = capped
    answer = app.test_client().post(
        "/api/v1/predict", headers=bearer(settings), **upload(image_bytes(size, fmt))
    )
    assert answer.status_code == status
    if status == 400:
        assert answer.get_json()["error"]["code"] == "invalid_image"
        assert "at most 100000" in answer.get_json()["error"]["message"]
        assert stored() == (0, 0)


def test_images_over_the_pixel_cap_are_refused_before_decoding(capped, monkeypatch):
    app, settings = capped

    def no_decoding(self):  # pragma: no cover - failing here is the bug
        raise AssertionError("decoded an image over the pixel cap")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    answer = app.test_client().post(
        "/api/v1/predict", headers=bearer(settings), **upload(image_bytes((2000, 2000), "JPEG"))
    )
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_image"


# ---------------------------------------------------------------------------------------------
# Security headers on every answer, errors included


def assert_security_headers(answer) -> None:
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in answer.headers["Content-Security-Policy"]
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/api/v1/predict", {}, 401),
        ("POST", "/api/v1/predict", {"data": b"text", "content_type": "text/plain", "auth": True}, 415),
        ("POST", "/api/v1/predict", {**upload(b"\x89PNG\r\n\x1a\n"), "auth": True}, 400),
        ("POST", "/api/v1/predict", {**upload(), "auth": True}, 200),
        ("GET", "/api/v1/predict", {"auth": True}, 405),
        ("GET", "/api/v1/nothing", {}, 404),
        ("GET", "/results/nothing", {}, 404),
        ("POST", "/", {"data": {}}, 400),
    ],
    ids=["401", "415", "400", "200 prediction", "405", "404 API", "404 page", "CSRF 400"],
)
def test_error_answers_carry_the_security_headers(client, settings, method, path, kwargs, status):
    if kwargs.pop("auth", False):
        kwargs["headers"] = bearer(settings)
    answer = client.open(path, method=method, **kwargs)
    assert answer.status_code == status
    assert_security_headers(answer)


def test_too_large_and_rate_limited_answers_carry_the_security_headers(settings, predictor):
    app = create_app(settings=replace(settings, max_upload_mb=1, rate_limit="1/minute"), predictor=predictor)
    client = app.test_client()
    too_large = client.post("/api/v1/predict", headers=bearer(settings), **upload(bytes(2 << 20)))
    assert too_large.status_code == 413
    assert_security_headers(too_large)
    limited = client.post("/api/v1/predict", headers=bearer(settings), **upload())
    assert limited.status_code == 429
    assert_security_headers(limited)


# ---------------------------------------------------------------------------------------------
# CSRF on the form


@pytest.mark.parametrize("token", ["wrong", "", "another session"])
def test_form_refuses_a_wrong_or_foreign_csrf_token_and_stores_nothing(app, client, stored, token):
    if token == "another session":
        token = csrf(app.test_client())
    else:
        csrf(client)  # this browser has a session, just not this token
    answer = client.post(
        "/",
        data={"csrf_token": token, "image": (io.BytesIO(image_bytes((256, 256))), "x.png")},
        headers={"Accept": "application/json"},
    )
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "csrf_failed"
    assert stored() == (0, 0)


def test_form_accepts_its_own_csrf_token(client, stored):
    answer = client.post(
        "/", data={"csrf_token": csrf(client), "image": (io.BytesIO(image_bytes((256, 256))), "x.png")}
    )
    assert answer.status_code == 303 and stored() == (1, 1)


def test_the_api_needs_no_csrf_token_but_a_bearer_token(client, settings):
    assert client.post("/api/v1/predict", headers=bearer(settings), **upload()).status_code == 200


# ---------------------------------------------------------------------------------------------
# Production: an unexpected exception is a generic 500, never a debug page


class ExplodingPredictor(Predictor):
    """A loaded predictor whose every prediction hits a bug."""

    backend, model_name, model_version, input_size = "keras", "exploding", "0", 224

    @property
    def ready(self) -> bool:
        return True

    def load(self) -> None:
        pass

    def predict(self, image: Prepared, data: bytes, explain: bool = False) -> Outcome:
        raise RuntimeError("boom in /srv/covidxray/model internals")


@pytest.fixture
def production(settings):
    app = create_app(settings=replace(settings, env="production"), predictor=ExplodingPredictor())
    assert not app.debug and not app.testing
    return app


def test_a_bug_answers_the_api_a_generic_500_without_traceback(production, settings, stored, caplog):
    caplog.set_level(logging.ERROR)
    answer = production.test_client().post("/api/v1/predict", headers=bearer(settings), **upload())
    assert answer.status_code == 500 and answer.get_json() == GENERIC_500
    text = answer.get_data(as_text=True)
    assert "Traceback" not in text and "boom" not in text and "RuntimeError" not in text
    assert stored() == (0, 0)
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and isinstance(logged[0].exc_info[1], RuntimeError)  # the traceback goes to the log


def test_a_bug_answers_the_form_a_plain_500_page(production, stored):
    client = production.test_client()
    answer = client.post(
        "/", data={"csrf_token": csrf(client), "image": (io.BytesIO(image_bytes((256, 256))), "x.png")}
    )
    assert answer.status_code == 500 and answer.mimetype == "text/html"
    text = answer.get_data(as_text=True)
    assert "internal error" in text
    assert "Traceback" not in text and "boom" not in text and "Werkzeug Debugger" not in text
    assert stored() == (0, 0)


def test_production_has_no_debugger_console(production):
    assert production.test_client().get("/console").status_code == 404


# ---------------------------------------------------------------------------------------------
# Secrets and tokens never reach the log


def test_no_secret_or_token_is_ever_logged(settings, predictor, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    app = create_app(settings=replace(settings, rate_limit="100/minute"), predictor=predictor)
    client = app.test_client()
    token = issue_token(settings, "alice")
    session_token = csrf(client)
    client.post("/api/v1/predict", headers={"Authorization": f"Bearer {token}"}, **upload())
    client.post("/api/v1/predict", headers={"x-access-token": token + "x"}, **upload())
    client.post(f"/api/v1/predict?token={token}", **upload())
    client.post(
        "/", data={"csrf_token": session_token, "image": (io.BytesIO(image_bytes((256, 256))), "x.png")}
    )
    client.post("/", data={"csrf_token": session_token + "x"})
    client.post("/history/login", data={"password": "hunter2-admin-password"})
    cookie = client.get_cookie("session")
    secrets = [
        *settings.jwt_keys.values(),
        settings.secret_key,
        token,
        session_token,
        "hunter2-admin-password",
    ]
    if cookie is not None:
        secrets.append(cookie.value)
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + " " + " ".join(repr(v) for v in vars(record).values())
        for secret in secrets:
            assert secret not in text, f"{record.name} logged a secret: {record.getMessage()}"
