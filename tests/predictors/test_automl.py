"""The AutoML service over real gRPC against the local Vertex AI / AutoML stand-in."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest
import requests
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from covidxray import create_app
from covidxray.automl_standin.emulator import control, serve
from covidxray.automl_standin.server import DISPLAY_NAMES
from covidxray.imaging.prepare import prepare
from covidxray.labels import LABELS
from covidxray.predictors.automl import MAX_CONTENT_BYTES, AutoMLPredictor, content_for, predict_files
from covidxray.predictors.automl_breaker import CircuitBreaker
from covidxray.predictors.automl_wire import Resource, is_loopback
from covidxray.settings import ConfigError, Settings
from covidxray.web.auth import issue_token
from tests.servers import ROOT, gunicorn

VERTEX = "projects/covidxray-test/locations/europe-west4/endpoints/1234567890"
LEGACY = "projects/covidxray-test/locations/us-central1/models/ICN1234567890"
HEATMAP_WARNING = "heatmaps are not available for the automl backend"


@pytest.fixture(scope="module")
def standin():
    """The stand-in on a free loopback port, shared by the module."""
    emulator = serve(port=0)
    yield emulator
    emulator.stop()


@pytest.fixture(autouse=True)
def fresh(standin):
    """Every test starts with a well-behaved stand-in and zero call counts."""
    standin.configure(labels=DISPLAY_NAMES, mode="ok", times=0, drop=None, reset=True)


@pytest.fixture(params=[VERTEX, LEGACY], ids=["vertex", "legacy"])
def endpoint(request) -> str:
    """Both client paths: a Vertex AI endpoint and a legacy AutoML model."""
    return request.param


def automl_client(settings: Settings, standin, endpoint: str = VERTEX, **overrides):
    """A test client of the AutoML service pointed at the stand-in (a 2 s budget unless overridden)."""
    values = {"automl_endpoint": endpoint, "automl_api_endpoint": standin.address, "automl_timeout": 2.0}
    return create_app(backend="automl", settings=replace(settings, **{**values, **overrides})).test_client()


def post(client, auth, data: bytes, name: str = "x.jpg", **fields):
    return client.post("/api/v1/predict", headers=auth, data={"image": (io.BytesIO(data), name), **fields})


def calls(standin) -> int:
    return sum(standin.state()["calls"].values())


def test_both_protocols_answer_the_contract_shape(settings, standin, endpoint, auth, sample_jpeg, stored):
    response = post(automl_client(settings, standin, endpoint), auth, sample_jpeg)
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["backend"] == "automl" and body["status"] == "ok"
    assert list(body["probabilities"]) == list(LABELS)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["predicted_class"] in (*LABELS, "uncertain") and body["warnings"] == []
    assert body["heatmap_url"] is None
    assert stored() == (1, 1)
    protocol = "vertex" if endpoint == VERTEX else "legacy"
    assert standin.state()["calls"] == {"vertex": 0, "legacy": 0, protocol: 1}


def test_probabilities_are_the_models_own(settings, standin, endpoint, auth, sample_jpeg, predictor):
    expected = predictor.predict(prepare(sample_jpeg, predictor.input_size), sample_jpeg).probabilities
    got = post(automl_client(settings, standin, endpoint), auth, sample_jpeg).get_json()["probabilities"]
    for label in LABELS:
        assert got[label] == pytest.approx(expected[label], abs=1e-5)


def test_display_names_map_to_our_labels_case_insensitively(settings, standin, endpoint, auth, sample_jpeg):
    reference = post(automl_client(settings, standin, endpoint), auth, sample_jpeg).get_json()[
        "probabilities"
    ]
    standin.configure(labels=("Sars-CoV-2", "Bacterial Pneumonia", "No Finding"))
    mapping = "NO FINDING=normal,sars-cov-2=covid,bacterial pneumonia=pneumonia"
    client = automl_client(settings, standin, endpoint, automl_labels=mapping)
    body = post(client, auth, sample_jpeg).get_json()
    assert body["warnings"] == []
    for label in LABELS:
        assert body["probabilities"][label] == pytest.approx(reference[label], abs=1e-6)


def test_missing_class_counts_as_zero_with_a_warning(settings, standin, endpoint, auth, sample_jpeg):
    standin.configure(mode="missing-class", drop="PNEUMONIA")
    body = post(automl_client(settings, standin, endpoint), auth, sample_jpeg).get_json()
    assert body["probabilities"]["pneumonia"] == 0.0
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert "the AutoML model gave no score for pneumonia; counted as 0" in body["warnings"]


def test_unmapped_display_names_are_ignored_with_a_warning(settings, standin, auth, sample_jpeg):
    standin.configure(labels=("COVID-19", "PNEUMONIA", "LUNG OPACITY"))
    response = post(automl_client(settings, standin), auth, sample_jpeg)
    body = response.get_json()
    assert response.status_code == 200
    assert body["probabilities"]["normal"] == 0.0
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert any("LUNG OPACITY" in w for w in body["warnings"])
    assert any("no score for normal" in w for w in body["warnings"])


def test_answer_without_a_known_class_is_a_502_that_keeps_the_upload(
    settings, standin, auth, sample_jpeg, stored
):
    standin.configure(mode="unknown-labels")
    response = post(automl_client(settings, standin), auth, sample_jpeg)
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "backend_unavailable"
    assert "LABEL_0" in response.get_json()["error"]["message"]
    assert stored() == (1, 1)


def test_unavailable_is_retried_then_503_keeping_image_and_record(
    settings, standin, endpoint, auth, sample_jpeg, stored
):
    standin.configure(mode="unavailable")
    client = automl_client(settings, standin, endpoint)
    response = post(client, auth, sample_jpeg)
    body = response.get_json()
    assert response.status_code == 503 and body["error"]["code"] == "backend_unavailable"
    assert re.fullmatch(r"[0-9a-f-]{36}", body["id"])
    assert calls(standin) > 1
    assert stored() == (1, 1)
    record = client.get(f"/api/v1/predictions/{body['id']}", headers=auth).get_json()
    assert record["status"] == "backend_unavailable" and record["probabilities"] is None


def test_a_passing_outage_is_bridged_by_retries(settings, standin, endpoint, auth, sample_jpeg):
    standin.configure(mode="unavailable", times=2)
    response = post(automl_client(settings, standin, endpoint), auth, sample_jpeg)
    assert response.status_code == 200
    assert calls(standin) == 3


def test_slow_backend_meets_the_deadline_and_answers_503(settings, standin, auth, sample_jpeg, stored):
    standin.configure(mode="slow", delay=15.0)
    client = automl_client(settings, standin, automl_timeout=2.0)
    started = time.monotonic()
    response = post(client, auth, sample_jpeg)
    assert time.monotonic() - started < 10.0  # bounded by the 2 s budget, not by the 15 s the backend takes
    assert response.status_code == 503 and "DEADLINE_EXCEEDED" in response.get_json()["error"]["message"]
    assert calls(standin) >= 2  # a stuck attempt is retried within the budget
    assert stored() == (1, 1)
    assert client.get("/readyz").get_json()["automl"]["last_error"] == "DEADLINE_EXCEEDED"


def test_circuit_breaker_fails_fast_while_readyz_stays_200(settings, standin, auth, sample_jpeg):
    standin.configure(mode="unavailable")
    client = automl_client(settings, standin)
    for _ in range(5):
        assert post(client, auth, sample_jpeg).status_code == 503
        if client.get("/readyz").get_json()["automl"]["circuit"] == "open":
            break
    before = calls(standin)
    response = post(client, auth, sample_jpeg)
    assert response.status_code == 503 and "not called" in response.get_json()["error"]["message"]
    assert calls(standin) == before  # the backend is not even tried while the circuit is open
    ready = client.get("/readyz")
    state = ready.get_json()["automl"]
    assert ready.status_code == 200
    assert (
        state["circuit"] == "open"
        and state["last_error"] == "UNAVAILABLE"
        and state["last_success_at"] is None
    )


@pytest.mark.parametrize("code", ["NOT_FOUND", "PERMISSION_DENIED"])
def test_other_grpc_errors_are_a_502_without_retries(settings, standin, endpoint, auth, sample_jpeg, code):
    standin.configure(mode="error", code=code)
    client = automl_client(settings, standin, endpoint)
    response = post(client, auth, sample_jpeg)
    assert response.status_code == 502 and response.get_json()["error"]["code"] == "backend_unavailable"
    assert code in response.get_json()["error"]["message"]
    assert calls(standin) == 1
    assert client.get("/readyz").get_json()["automl"]["circuit"] == "closed"


def test_service_starts_and_stays_ready_with_the_standin_stopped(settings, auth, sample_jpeg, stored):
    stopped = serve(port=0)
    stopped.stop()
    client = automl_client(settings, stopped)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True
    response = post(client, auth, sample_jpeg)
    assert response.status_code == 503 and response.get_json()["id"]
    assert client.get("/readyz").status_code == 200
    assert stored() == (1, 1)


def test_explain_answers_no_heatmap_with_a_warning(settings, standin, auth, sample_jpeg):
    body = post(automl_client(settings, standin), auth, sample_jpeg, explain="1").get_json()
    assert body["heatmap_url"] is None and HEATMAP_WARNING in body["warnings"]


def dicom_of(png: bytes) -> bytes:
    """A DX DICOM file holding the pixels of an 8-bit grayscale PNG."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, generate_uid()
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "DX", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_dicom_is_sent_as_png_and_scores_like_the_png(settings, standin, auth, sample_png):
    client = automl_client(settings, standin)
    as_png = post(client, auth, sample_png, name="x.png").get_json()["probabilities"]
    response = post(client, auth, dicom_of(sample_png), name="x.dcm")  # the stand-in refuses DICOM itself
    assert response.status_code == 200, response.get_json()
    for label in LABELS:
        assert response.get_json()["probabilities"][label] == pytest.approx(as_png[label], abs=0.02)


def test_large_uploads_are_sent_within_the_request_limit():
    noise = np.random.default_rng(0).integers(0, 256, (1400, 1400), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG")
    data = out.getvalue()
    assert len(data) > MAX_CONTENT_BYTES
    sent = content_for(prepare(data, 224), data)
    assert len(sent) <= MAX_CONTENT_BYTES and sent.startswith(b"\xff\xd8\xff")


def test_control_method_changes_the_standin_over_grpc(standin):
    state = control(standin.address, mode="error", code="NOT_FOUND", times=1)
    assert state["mode"] == "error" and state["times"] == 1
    with pytest.raises(grpc.RpcError) as caught:
        control(standin.address, mode="sulk")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_predict_files_gives_probabilities_for_evaluate(settings, standin, tmp_path, sample_jpeg):
    (tmp_path / "a.jpg").write_bytes(sample_jpeg)
    (tmp_path / "b.png").write_bytes(b"not an image")
    predictor = AutoMLPredictor(VERTEX, standin.address)
    probs, errors = predict_files(predictor, [tmp_path / "a.jpg", tmp_path / "b.png"])
    assert probs.shape == (2, 3) and probs[0].sum() == pytest.approx(1.0) and np.isnan(probs[1]).all()
    assert errors[0] is None and errors[1]


def test_circuit_breaker_probes_after_the_cooldown():
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10.0, clock=lambda: now[0])
    breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half_open" and breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.failure()  # the probe failed: open again
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


@pytest.mark.parametrize(
    ("name", "host"),
    [
        (VERTEX, "europe-west4-aiplatform.googleapis.com"),
        ("projects/p/locations/us-central1/endpoints/7", "us-central1-aiplatform.googleapis.com"),
        (LEGACY, "automl.googleapis.com"),
        ("projects/p/locations/eu/models/ICN1", "eu-automl.googleapis.com"),
    ],
)
def test_api_endpoint_is_derived_from_the_location(name, host):
    assert Resource.parse(name).api_host == host


@pytest.mark.parametrize(
    ("address", "plain"),
    [
        ("127.0.0.1:8091", True),
        ("localhost:1", True),
        ("[::1]:8091", True),
        ("aiplatform.googleapis.com:443", False),
    ],
)
def test_only_loopback_api_endpoints_go_without_tls(address, plain):
    assert is_loopback(address) is plain


@pytest.mark.parametrize(
    ("endpoint", "labels", "message"),
    [
        (None, Settings.automl_labels, "COVIDXRAY_AUTOML_ENDPOINT"),
        ("projects/p/endpoints/1", Settings.automl_labels, "COVIDXRAY_AUTOML_ENDPOINT"),
        (VERTEX, "COVID-19=covid,PNEUMONIA=pneumonia", "normal"),
        (VERTEX, "COVID-19=covid,PNEUMONIA=pneumonia,NORMAL=healthy", "COVIDXRAY_AUTOML_LABELS"),
    ],
)
def test_bad_settings_refuse_to_start(endpoint, labels, message):
    with pytest.raises(ConfigError, match=message):
        AutoMLPredictor(endpoint, "127.0.0.1:1", labels)


def test_missing_google_credentials_refuse_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="roles/aiplatform.user"):
        AutoMLPredictor(VERTEX).load()


def test_service_never_imports_tensorflow(tmp_path, sample_jpeg):
    (tmp_path / "x.jpg").write_bytes(sample_jpeg)
    script = textwrap.dedent(
        """
        import io, os, runpy, sys
        from covidxray.automl_standin.emulator import serve
        standin = serve(port=0)
        os.environ["COVIDXRAY_AUTOML_API_ENDPOINT"] = standin.address
        app = runpy.run_path("app-automl/wsgi.py")["app"]
        from covidxray.web.auth import issue_token
        from covidxray.settings import Settings
        token = issue_token(Settings.from_env().validated(), "alice")
        data = open(sys.argv[1], "rb").read()
        headers, form = {"Authorization": "Bearer " + token}, {"image": (io.BytesIO(data), "x.jpg")}
        response = app.test_client().post("/api/v1/predict", headers=headers, data=form)
        assert response.status_code == 200, response.get_json()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not loaded, loaded
        """
    )
    env = {**os.environ, "COVIDXRAY_DATA_DIR": str(tmp_path), "COVIDXRAY_AUTOML_ENDPOINT": VERTEX}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "x.jpg")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_automl_service_under_gunicorn_exports_backend_metrics(tmp_path, standin, sample_jpeg):
    env = {"COVIDXRAY_AUTOML_ENDPOINT": VERTEX, "COVIDXRAY_AUTOML_API_ENDPOINT": standin.address}
    # answer_timeout: a worker importing google-cloud-aiplatform may take over 1 s to answer /readyz
    with gunicorn(tmp_path, service="app-automl", workers=1, answer_timeout=15, **env) as url:
        headers = {"Authorization": f"Bearer {issue_token(Settings(data_dir=tmp_path).validated(), 'a')}"}
        files = {"image": ("x.jpg", sample_jpeg)}
        assert (
            requests.post(f"{url}/api/v1/predict", headers=headers, files=files).json()["backend"] == "automl"
        )
        standin.configure(mode="error", code="NOT_FOUND")
        assert requests.post(f"{url}/api/v1/predict", headers=headers, files=files).status_code == 502
        metrics = requests.get(f"{url}/metrics", timeout=15).text
    assert re.search(r'covidxray_automl_failures_total\{code="NOT_FOUND"\} 1\.0', metrics)
    assert re.search(r"covidxray_automl_circuit_open 0\.0", metrics)
    assert re.search(r"covidxray_automl_last_success_timestamp_seconds \d", metrics)


def test_evaluate_compares_the_configured_endpoint_with_the_same_metrics(standin, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covidxray.cli import main

    for sample in (ROOT / "tests" / "samples").glob("*.jpg"):
        label = sample.name.split("-", 1)[0]
        (tmp_path / label).mkdir(exist_ok=True)
        (tmp_path / label / sample.name).write_bytes(sample.read_bytes())
    monkeypatch.setenv("COVIDXRAY_AUTOML_ENDPOINT", VERTEX)
    monkeypatch.setenv("COVIDXRAY_AUTOML_API_ENDPOINT", standin.address)
    runner = CliRunner()
    automl = runner.invoke(main, ["evaluate", "--backend", "automl", "--data", str(tmp_path), "--json"])
    keras = runner.invoke(main, ["evaluate", "--data", str(tmp_path), "--json"])
    assert automl.exit_code == 0, automl.output
    ours, theirs = json.loads(keras.output), json.loads(automl.output)
    assert theirs["backend"] == "automl" and theirs["n"] == ours["n"] == 7
    assert set(theirs) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix", "roc_auc", "ece", "ci95"}
    # the stand-in serves our own model: the same answers prove the path, not AutoML's quality
    assert theirs["confusion_matrix"] == ours["confusion_matrix"]


def test_evaluate_says_when_the_endpoint_is_unreachable(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from covidxray.cli import main

    (tmp_path / "covid").mkdir()
    (tmp_path / "covid" / "x.jpg").write_bytes(
        next((ROOT / "tests" / "samples").glob("covid-*.jpg")).read_bytes()
    )
    monkeypatch.setenv("COVIDXRAY_AUTOML_ENDPOINT", VERTEX)
    monkeypatch.setenv("COVIDXRAY_AUTOML_API_ENDPOINT", "127.0.0.1:9")
    monkeypatch.setenv("COVIDXRAY_AUTOML_TIMEOUT", "1")
    result = CliRunner().invoke(main, ["evaluate", "--backend", "automl", "--data", str(tmp_path), "--json"])
    assert result.exit_code == 1 and "Error" in result.output
