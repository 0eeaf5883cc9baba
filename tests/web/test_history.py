"""The admin history (login, filters, CSV, audit) and retention."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from werkzeug.security import generate_password_hash

from covidxray import create_app
from covidxray.backends.requestlog import SqliteRequestLog
from covidxray.retention import purge_expired

PASSWORD = "correct horse battery staple"


@pytest.fixture
def admin_app(settings, predictor):
    return create_app(
        settings=replace(settings, admin_password_hash=generate_password_hash(PASSWORD)), predictor=predictor
    )


def csrf(client, path: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True)).group(1)


def log_in(client, password: str = PASSWORD):
    return client.post(
        "/history/login", data={"csrf_token": csrf(client, "/history/login"), "password": password}
    )


def predict(app, auth, data: bytes, **fields) -> dict:
    form = {"image": (io.BytesIO(data), "x.jpg"), **fields}
    return app.test_client().post("/api/v1/predict", headers=auth, data=form).get_json()


def test_history_is_disabled_without_a_password_hash(client):
    assert client.get("/history").status_code == 404


def test_history_needs_the_admin_login(admin_app):
    client = admin_app.test_client()
    assert client.get("/history").status_code == 303
    assert log_in(client, "wrong").status_code == 401
    assert log_in(client).status_code == 303
    assert client.get("/history").status_code == 200


def test_login_without_csrf_token_is_refused(admin_app):
    response = admin_app.test_client().post("/history/login", data={"password": PASSWORD})
    assert response.status_code == 400


def test_history_lists_filters_exports_and_audits(admin_app, auth, sample_jpeg, tmp_path):
    created = predict(admin_app, auth, sample_jpeg, age="30")
    client = admin_app.test_client()
    log_in(client)
    page = client.get("/history").get_data(as_text=True)
    assert created["id"] in page
    thumb = client.get(f"/history/{created['id']}/thumb.png")
    assert thumb.status_code == 200 and thumb.mimetype == "image/png"
    other = "normal" if created["predicted_class"] != "normal" else "covid"
    assert created["id"] not in client.get(f"/history?class={other}").get_data(as_text=True)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert created["id"] not in client.get(f"/history?from={tomorrow}").get_data(as_text=True)
    export = client.get("/history.csv")
    rows = list(csv.DictReader(io.StringIO(export.get_data(as_text=True))))
    assert export.mimetype == "text/csv" and rows[0]["id"] == created["id"] and rows[0]["age"] == "30"
    actions = [entry[2] for entry in SqliteRequestLog(tmp_path / "requests.sqlite3").audit_entries()]
    assert actions == ["login", "view", "view", "view", "export"]


@pytest.mark.parametrize("query", ["class=alien", "from=yesterday", "to=2026-13-01"])
def test_bad_filters_are_400(admin_app, query):
    client = admin_app.test_client()
    log_in(client)
    assert client.get(f"/history?{query}").status_code == 400


def test_retention_erases_old_images_and_records(app, auth, sample_jpeg, sample_png, stored):
    client = app.test_client()
    client.post("/api/v1/predict", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "a.jpg")})
    client.post("/api/v1/predict", headers=auth, data={"image": (io.BytesIO(sample_png), "b.png")})
    services = app.extensions["covidxray"]
    assert purge_expired(services, days=30) == 0 and stored() == (2, 2)
    assert purge_expired(services, days=30, now=datetime.now(UTC) + timedelta(days=31)) == 2
    assert stored() == (0, 0)
