"""Settings from the environment; development secrets; production refuses weak ones."""

from __future__ import annotations

import pytest

from covidxray.settings import ConfigError, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("COVIDXRAY_ENV", "COVIDXRAY_JWT_SECRET", "COVIDXRAY_JWT_KEYS", "COVIDXRAY_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_follow_the_contract(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDXRAY_DATA_DIR", str(tmp_path))
    settings = Settings.from_env()
    assert settings.image_store == f"file://{tmp_path / 'uploads'}"
    assert settings.request_log == f"sqlite:///{tmp_path / 'requests.sqlite3'}"
    assert (settings.uncertain_below, settings.max_upload_mb, settings.max_batch) == (0.6, 20, 16)
    assert settings.rate_limit is None


def test_development_secrets_are_generated_once_and_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDXRAY_DATA_DIR", str(tmp_path))
    first, second = Settings.from_env().validated(), Settings.from_env().validated()
    assert first.secret_key == second.secret_key and len(first.secret_key) >= 32
    assert first.jwt_keys == second.jwt_keys
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0


def test_production_names_every_missing_secret(monkeypatch):
    monkeypatch.setenv("COVIDXRAY_ENV", "production")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env().validated()
    assert "COVIDXRAY_SECRET_KEY" in str(caught.value) and "COVIDXRAY_JWT_SECRET" in str(caught.value)


def test_production_refuses_a_weak_secret(monkeypatch):
    monkeypatch.setenv("COVIDXRAY_ENV", "production")
    monkeypatch.setenv("COVIDXRAY_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("COVIDXRAY_JWT_SECRET", "secret")
    with pytest.raises(ConfigError, match="COVIDXRAY_JWT_SECRET"):
        Settings.from_env().validated()


def test_production_starts_with_strong_secrets(monkeypatch):
    monkeypatch.setenv("COVIDXRAY_ENV", "production")
    monkeypatch.setenv("COVIDXRAY_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("COVIDXRAY_JWT_KEYS", "2026a=" + "a" * 40)
    settings = Settings.from_env().validated()
    assert settings.jwt_keys == {"2026a": "a" * 40} and settings.rate_limit == "600/minute"


@pytest.mark.parametrize(
    ("name", "value"), [("COVIDXRAY_MAX_BATCH", "many"), ("COVIDXRAY_JWT_KEYS", "nokey")]
)
def test_malformed_settings_are_named(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        Settings.from_env()
