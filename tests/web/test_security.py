"""Security headers and rate limits."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from covidxray import create_app
from covidxray.web.auth import issue_token


@pytest.mark.parametrize("path", ["/", "/api/openapi.json", "/healthz", "/api/docs/"])
def test_every_response_carries_security_headers(client, path):
    headers = client.get(path).headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self';" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_pages_have_no_inline_script(client):
    for path in ("/", "/api/docs/"):
        page = client.get(path).get_data(as_text=True)
        assert "<script>" not in page and "onclick" not in page


def test_docs_assets_are_served_locally(client):
    assert client.get("/api/docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/swagger-init.js").status_code == 200


@pytest.fixture
def limited(settings, predictor):
    return create_app(settings=replace(settings, rate_limit="3/minute"), predictor=predictor)


def test_rate_limit_answers_429_with_retry_after(limited, sample_jpeg):
    client = limited.test_client()
    headers = {"Authorization": f"Bearer {issue_token(limited.extensions['covidxray'].settings, 'a')}"}
    statuses = [
        client.post("/api/v1/predict", headers=headers, data={"image": (io.BytesIO(sample_jpeg), "x.jpg")})
        for _ in range(4)
    ]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert statuses[-1].get_json()["error"]["code"] == "rate_limited"
    assert int(statuses[-1].headers["Retry-After"]) > 0


def test_health_routes_are_never_limited(limited):
    client = limited.test_client()
    assert {client.get("/healthz").status_code for _ in range(6)} == {200}


def test_rate_limit_is_off_in_development_by_default(client):
    assert {client.get("/").status_code for _ in range(30)} == {200}
