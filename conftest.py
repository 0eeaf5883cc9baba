"""Shared fixtures: an app built by `create_app` over temp folders, its client and a token."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from covidxray import create_app
from covidxray.backends.requestlog import SqliteRequestLog
from covidxray.predictors.keras import KerasPredictor
from covidxray.settings import Settings
from covidxray.web.auth import issue_token

SAMPLES = Path(__file__).parent / "tests" / "samples"


@pytest.fixture(scope="session")
def predictor() -> KerasPredictor:
    """The shipped model, loaded once for the whole run."""
    loaded = KerasPredictor(Settings.from_env().model)
    loaded.load()
    return loaded


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Development settings over a temp data folder, independent of the environment.

    The gate for non-frontal inputs is off here, since most tests upload generated pictures;
    tests/predictors/test_ood.py turns it on (its default, `refuse`, and `warn`).
    """
    return Settings(
        data_dir=tmp_path,
        jwt_keys={"": "test-secret-" + "x" * 32},
        secret_key="test-session-key-" + "y" * 32,
        image_store=f"file://{tmp_path / 'uploads'}",
        request_log=f"sqlite:///{tmp_path / 'requests.sqlite3'}",
        ood="off",
    )


@pytest.fixture
def app(settings: Settings, predictor: KerasPredictor) -> Iterator[Flask]:
    """The Keras service."""
    yield create_app(backend="keras", settings=settings, predictor=predictor)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture
def token(settings: Settings) -> str:
    """A valid token for subject `alice` with the default scopes."""
    return issue_token(settings, "alice")


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    """Authorization headers for `alice`."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def sample_jpeg() -> bytes:
    """A covid sample radiograph (JPEG)."""
    return sorted(SAMPLES.glob("covid-*.jpg"))[0].read_bytes()


@pytest.fixture
def sample_png(sample_jpeg: bytes) -> bytes:
    """The same radiograph as an 8-bit grayscale PNG."""
    out = io.BytesIO()
    Image.open(io.BytesIO(sample_jpeg)).convert("L").save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def stored(tmp_path: Path) -> Callable[[], tuple[int, int]]:
    """A function returning (number of stored files, number of request rows)."""

    def count() -> tuple[int, int]:
        uploads = tmp_path / "uploads"
        files = [p for p in uploads.rglob("*") if p.is_file()] if uploads.exists() else []
        return len(files), SqliteRequestLog(tmp_path / "requests.sqlite3").count()

    return count
