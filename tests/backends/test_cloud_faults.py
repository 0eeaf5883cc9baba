"""The service on Cloud Storage and BigQuery loses nothing it accepted while both are down."""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from flask import Flask
from google.cloud import bigquery, storage
from PIL import Image

from covidxray import create_app
from covidxray.backends import outbox as ob
from covidxray.backends.bigquery import init_bigquery, make_client
from covidxray.imaging.prepare import Prepared
from covidxray.predictors.base import Outcome, Predictor
from covidxray.settings import Settings
from covidxray.web.auth import issue_token
from tests.backends.test_gcs import BUCKET, gcs_emulator
from tests.bigquery_server import BigQueryServer
from tests.ports import steady_port
from tests.servers import ROOT, gunicorn

LOG_URI = "bigquery://proj/covidxray/predictions"
WSGI = """
from covidxray import create_app
from covidxray.backends import outbox
from tests.backends.test_cloud_faults import FakePredictor

outbox.BASE_DELAY = 60.0  # no second attempt before SIGTERM: only the drain can ship
app = create_app(predictor=FakePredictor())
"""
TABLE = "proj.covidxray.predictions"


class FakePredictor(Predictor):
    """Answers `normal` at once: these tests are about storage, not the model."""

    backend, model_name, model_version, input_size = "keras", "fake", "0", 64

    @property
    def ready(self) -> bool:
        return True

    def load(self) -> None:
        pass

    def predict(self, image: Prepared, data: bytes, explain: bool = False) -> Outcome:
        return Outcome({"covid": 0.1, "pneumonia": 0.1, "normal": 0.8})


def noise_png(seed: int) -> bytes:
    """A distinct 96x96 grayscale PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (96, 96), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, "PNG")
    return out.getvalue()


class Cloud:
    """Both emulators on fixed ports over fixed data, so they can be stopped and started again."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root, self.gcs_port, self.bq_port = root, steady_port(), steady_port()
        self.stack: ExitStack | None = None
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{self.gcs_port}")
        monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", f"http://127.0.0.1:{self.bq_port}")

    def start(self) -> None:
        """Start both (their data survives a stop)."""
        self.stack = ExitStack()
        self.stack.enter_context(gcs_emulator(self.root / "gcs", self.gcs_port))
        # no insertId de-duplication: a row shipped twice would show as two
        self.stack.callback(
            BigQueryServer(self.root / "bq.sqlite3", self.bq_port, dedup_seconds=0).start().stop
        )

    def stop(self) -> None:
        """Stop both."""
        if self.stack is not None:
            self.stack.close()
            self.stack = None


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    """Running emulators with the bucket, dataset, tables and view."""
    emulators = Cloud(tmp_path, monkeypatch)
    emulators.start()
    init_bigquery(LOG_URI)
    yield emulators
    emulators.stop()


@pytest.fixture
def cloud_app(cloud: Cloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """The service on gs:// and bigquery://, with a short retry delay; its worker stopped after the test."""
    monkeypatch.setattr(ob, "BASE_DELAY", 0.05)
    monkeypatch.setattr(ob, "MAX_DELAY", 0.5)
    settings = Settings(
        ood="off",  # generated pictures; the gate is tests/predictors/test_ood.py's
        data_dir=tmp_path,
        jwt_keys={"": "test-secret-" + "x" * 32},
        secret_key="test-session-key-" + "y" * 32,
        image_store=f"gs://{BUCKET}/uploads",
        request_log=LOG_URI,
    )
    app = create_app(settings=settings, predictor=FakePredictor())
    yield app
    app.extensions["covidxray.outbox"].stop(drain_seconds=0)


def headers(app: Flask) -> dict[str, str]:
    """Authorization for `alice`."""
    return {"Authorization": f"Bearer {issue_token(app.extensions['covidxray'].settings, 'alice')}"}


def predict(app: Flask, images: list[bytes]) -> list[dict[str, Any]]:
    """POST each image as a raw PNG body; every answer must be 200."""
    client, auth = app.test_client(), headers(app)
    answers = [
        client.post("/api/v1/predict", data=data, headers={**auth, "Content-Type": "image/png"})
        for data in images
    ]
    assert [a.status_code for a in answers] == [200] * len(images)
    return [a.get_json() for a in answers]


def wait_for_empty_outbox(app: Flask, timeout: float) -> None:
    """Until /readyz says the outbox is empty."""
    deadline = time.monotonic() + timeout
    while app.test_client().get("/readyz").get_json()["outbox"]["depth"]:
        assert time.monotonic() < deadline, "the outbox did not drain in time"
        time.sleep(0.1)


def test_nothing_accepted_is_lost_while_storage_and_bigquery_are_down(cloud: Cloud, cloud_app: Flask) -> None:
    images = [noise_png(seed) for seed in range(400)]
    answers = predict(cloud_app, images[:200])
    cloud.stop()
    answers += predict(cloud_app, images[200:])
    client, auth = cloud_app.test_client(), headers(cloud_app)
    fresh = client.get(f"/api/v1/predictions/{answers[-1]['id']}", headers=auth)
    assert fresh.status_code == 200 and fresh.get_json()["image"] == answers[-1]["image"]  # from the outbox
    assert client.get("/readyz").get_json()["outbox"]["depth"] > 0
    cloud.start()
    wait_for_empty_outbox(cloud_app, timeout=180)

    blobs = list(storage.Client().list_blobs(BUCKET, prefix="uploads/"))
    digests = {hashlib.sha256(data).hexdigest() for data in images}
    assert sorted(blob.name.rsplit("/", 1)[1].split(".")[0] for blob in blobs) == sorted(digests)
    assert {hashlib.sha256(blob.download_as_bytes()).hexdigest() for blob in blobs[:20]} <= digests
    rows = list(make_client("proj").list_rows(TABLE))  # the raw table, not the de-duplicating view
    assert sorted(row["id"] for row in rows) == sorted(answer["id"] for answer in answers)
    assert {row["image_uri"] for row in rows} == {answer["image"]["uri"] for answer in answers}
    assert cloud_app.extensions["covidxray.outbox"].state()["depth"] == 0


def test_readyz_and_metrics_show_the_outbox_depth_and_age(cloud: Cloud, cloud_app: Flask) -> None:
    cloud.stop()
    predict(cloud_app, [noise_png(1)])
    time.sleep(0.2)
    client = cloud_app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200  # the outbox is told, never judged
    assert ready.get_json()["outbox"]["depth"] == 2 and ready.get_json()["outbox"]["oldest_age_s"] >= 0.2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "covidxray_outbox_depth 2.0" in metrics
    assert "covidxray_outbox_oldest_age_seconds" in metrics
    cloud.start()
    wait_for_empty_outbox(cloud_app, timeout=60)
    assert "covidxray_outbox_depth 0.0" in client.get("/metrics").get_data(as_text=True)


def test_an_erased_prediction_disappears_at_once_and_from_the_cloud(cloud: Cloud, cloud_app: Flask) -> None:
    (answer,) = predict(cloud_app, [noise_png(7)])
    wait_for_empty_outbox(cloud_app, timeout=60)
    client, auth = cloud_app.test_client(), headers(cloud_app)
    assert client.delete(f"/api/v1/predictions/{answer['id']}", headers=auth).status_code == 204
    assert client.get(f"/api/v1/predictions/{answer['id']}", headers=auth).status_code == 404
    wait_for_empty_outbox(cloud_app, timeout=60)
    assert list(storage.Client().list_blobs(BUCKET, prefix="uploads/")) == []
    assert list(bigquery.Client.list_rows(make_client("proj"), TABLE)) == []


@pytest.mark.slow
def test_gunicorn_workers_drain_the_outbox_on_sigterm(cloud: Cloud, tmp_path: Path) -> None:
    service = tmp_path / "service"
    service.mkdir()
    (service / "wsgi.py").write_text(WSGI)
    images = [noise_png(1000 + n) for n in range(12)]
    env = {
        "PYTHONPATH": str(ROOT),
        "COVIDXRAY_IMAGE_STORE": f"gs://{BUCKET}/uploads",
        "COVIDXRAY_REQUEST_LOG": LOG_URI,
    }
    cloud.stop()
    with gunicorn(tmp_path, service=str(service), workers=2, **env) as url:
        auth = {"Authorization": f"Bearer {issue_token(Settings(data_dir=tmp_path).validated(), 'alice')}"}
        for data in images:
            answer = requests.post(
                f"{url}/api/v1/predict", data=data, headers={**auth, "Content-Type": "image/png"}
            )
            assert answer.status_code == 200, answer.text
        assert requests.get(f"{url}/readyz").json()["outbox"]["depth"] == 2 * len(images)
        assert re.search(r"^covidxray_outbox_depth \d", requests.get(f"{url}/metrics").text, re.MULTILINE)
        cloud.start()
    # SIGTERM: each worker ships what is left (for up to DRAIN_SECONDS) before it exits
    assert ob.Outbox(tmp_path / "outbox.sqlite3").state()["depth"] == 0
    assert len(list(storage.Client().list_blobs(BUCKET, prefix="uploads/"))) == len(images)
    assert len(list(make_client("proj").list_rows(TABLE))) == len(images)
