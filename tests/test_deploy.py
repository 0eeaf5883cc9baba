"""The Cloud Run service files in deploy/: what `gcloud run services replace` would deploy."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template
from typing import Any

import pytest

from covidxray.settings import MIN_SECRET_BYTES, Settings

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("keras", "automl")
PLACEHOLDERS = {
    "keras": {"PROJECT_ID", "REGION", "IMAGE"},
    "automl": {"PROJECT_ID", "REGION", "IMAGE", "AUTOML_LOCATION", "AUTOML_ENDPOINT_ID"},
}
VALUES = {
    "PROJECT_ID": "acme-xray",
    "REGION": "europe-west1",
    "IMAGE": "europe-west1-docker.pkg.dev/acme-xray/covidxray/keras@sha256:" + "a" * 64,
    "AUTOML_LOCATION": "us-central1",
    "AUTOML_ENDPOINT_ID": "1234567890",
}
SECRETS = {
    "COVIDXRAY_SECRET_KEY": "covidxray-secret-key",
    "COVIDXRAY_JWT_SECRET": "covidxray-jwt-secret",
    "COVIDXRAY_ADMIN_PASSWORD_HASH": "covidxray-admin-password-hash",
}


def template(service: str) -> Template:
    return Template((ROOT / "deploy" / f"{service}.yaml").read_text())


def rendered(service: str) -> dict[str, Any]:
    """The service file with its placeholders substituted, parsed."""
    return yaml.safe_load(template(service).substitute(VALUES))  # type: ignore[no-any-return]


def container(service: str) -> dict[str, Any]:
    (only,) = rendered(service)["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def plain_env(service: str) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(service)["env"] if "value" in e}


def names_read_by_the_code() -> set[str]:
    """Every environment variable name the package mentions (settings, gunicorn_conf)."""
    text = "".join(p.read_text() for p in (ROOT / "covidxray").rglob("*.py"))
    return set(re.findall(r"[\"']((?:COVIDXRAY|HOST|PORT)\w*)[\"']", text))


@pytest.mark.parametrize("service", SERVICES)
def test_placeholders_are_exactly_the_documented_ones(service):
    assert template(service).is_valid()
    assert set(template(service).get_identifiers()) == PLACEHOLDERS[service]
    with pytest.raises(KeyError):  # CircleCI's strict substitution fails on a missing value
        template(service).substitute({k: v for k, v in VALUES.items() if k != "IMAGE"})


@pytest.mark.parametrize("service", SERVICES)
def test_is_a_cloud_run_service_named_after_its_backend_in_its_region(service):
    doc = rendered(service)
    assert (doc["apiVersion"], doc["kind"]) == ("serving.knative.dev/v1", "Service")
    assert doc["metadata"]["name"] == f"covidxray-{service}"
    assert doc["metadata"]["labels"]["cloud.googleapis.com/location"] == VALUES["REGION"]
    assert container(service)["image"] == VALUES["IMAGE"]
    account = doc["spec"]["template"]["spec"]["serviceAccountName"]
    assert account == f"covidxray-run@{VALUES['PROJECT_ID']}.iam.gserviceaccount.com"
    assert "traffic" not in doc["spec"]  # the deploy job decides the traffic, not the file


@pytest.mark.parametrize("service", SERVICES)
def test_cpu_stays_allocated_and_scaling_is_bounded(service):
    annotations = rendered(service)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    low = int(annotations["autoscaling.knative.dev/minScale"])
    high = int(annotations["autoscaling.knative.dev/maxScale"])
    assert 1 <= low <= high  # a warm instance keeps draining the outbox


@pytest.mark.parametrize("service", SERVICES)
def test_concurrency_and_timeouts_match_gunicorn(service):
    spec = rendered(service)["spec"]["template"]["spec"]
    env = plain_env(service)
    assert spec["containerConcurrency"] == int(env["COVIDXRAY_WORKERS"]) * int(env["COVIDXRAY_THREADS"])
    assert spec["timeoutSeconds"] > int(env["COVIDXRAY_TIMEOUT"])
    limits = container(service)["resources"]["limits"]
    assert float(limits["cpu"]) >= 1 and re.fullmatch(r"\d+(Mi|Gi)", limits["memory"])


@pytest.mark.parametrize("service", SERVICES)
def test_probes_ask_readyz_at_start_and_healthz_while_alive(service):
    spec = container(service)
    port = spec["ports"][0]["containerPort"]
    startup, liveness = spec["startupProbe"], spec["livenessProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": port}
    assert liveness["httpGet"] == {"path": "/healthz", "port": port}
    assert startup["periodSeconds"] * startup["failureThreshold"] <= 240  # Cloud Run's limit
    assert all(p["timeoutSeconds"] <= p["periodSeconds"] for p in (startup, liveness))


@pytest.mark.parametrize("service", SERVICES)
def test_secrets_come_from_secret_manager_only(service):
    env = container(service)["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert refs == {name: {"name": secret, "key": "latest"} for name, secret in SECRETS.items()}
    assert not set(SECRETS) & set(plain_env(service))
    assert "COVIDXRAY_JWT_KEYS" not in plain_env(service)


@pytest.mark.parametrize("service", SERVICES)
def test_environment_is_production_behind_one_proxy_on_cloud_backends(service):
    env = plain_env(service)
    assert env["COVIDXRAY_ENV"] == "production" and env["COVIDXRAY_TRUSTED_PROXIES"] == "1"
    assert env["COVIDXRAY_IMAGE_STORE"] == f"gs://{VALUES['PROJECT_ID']}-covidxray-images/{service}"
    assert env["COVIDXRAY_REQUEST_LOG"] == f"bigquery://{VALUES['PROJECT_ID']}/covidxray/requests"
    assert "PORT" not in env and "HOST" not in env  # Cloud Run sets PORT; the image sets HOST
    assert set(env) <= names_read_by_the_code()
    endpoint = env.get("COVIDXRAY_AUTOML_ENDPOINT")
    if service == "automl":
        assert endpoint == "projects/acme-xray/locations/us-central1/endpoints/1234567890"
    else:
        assert endpoint is None


@pytest.mark.parametrize("service", SERVICES)
def test_settings_accept_the_deployed_environment(service, monkeypatch):
    for name in names_read_by_the_code():
        monkeypatch.delenv(name, raising=False)
    for name, value in plain_env(service).items():
        monkeypatch.setenv(name, value)
    for name in SECRETS:  # what Secret Manager holds: strong values
        monkeypatch.setenv(name, "s" * MIN_SECRET_BYTES)
    settings = Settings.from_env().validated()
    assert settings.production and settings.trusted_proxies == 1
    assert settings.rate_limit == "600/minute"
    assert (settings.image_store, settings.request_log) == (
        plain_env(service)["COVIDXRAY_IMAGE_STORE"],
        plain_env(service)["COVIDXRAY_REQUEST_LOG"],
    )
