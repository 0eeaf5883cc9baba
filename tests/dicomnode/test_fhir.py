"""GET /api/v1/predictions/<id>/fhir: an R4 DiagnosticReport, validated by fhir.resources (R4B models)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.dicomnode.films import cr_dataset, to_bytes
from tests.dicomnode.test_stow import RELATED, multipart

R4B = pytest.importorskip(
    "fhir.resources.R4B.diagnosticreport", reason="fhir.resources is not installed (dev)"
)


def _report(client: FlaskClient, auth: dict[str, str], request_id: str) -> dict:
    answer = client.get(f"/api/v1/predictions/{request_id}/fhir", headers=auth)
    assert answer.status_code == 200
    assert answer.mimetype == "application/fhir+json"
    return answer.get_json()


def test_upload_prediction_is_a_valid_preliminary_diagnostic_report(
    client: FlaskClient, auth, sample_png
) -> None:
    prediction = client.post(
        "/api/v1/predict", data=sample_png, headers={**auth, "Content-Type": "image/png"}
    ).get_json()
    body = _report(client, auth, prediction["id"])
    report = R4B.DiagnosticReport.model_validate(body)
    assert report.status == "preliminary"
    assert report.code.coding[0].system == "http://loinc.org" and report.code.coding[0].code == "36554-4"
    assert {c.code for c in report.category[0].coding} == {"RAD", "imaging"}
    assert report.imagingStudy is None  # not a DICOM input
    observations = {r["id"]: r for r in body["contained"] if r["resourceType"] == "Observation"}
    assert {k: o["valueQuantity"]["value"] for k, o in observations.items()} == {
        f"p-{label}": pytest.approx(p, abs=1e-6) for label, p in prediction["probabilities"].items()
    }
    assert all(o["device"] == {"reference": "#model"} for o in observations.values())
    [device] = [r for r in body["contained"] if r["resourceType"] == "Device"]
    assert device["deviceName"][0]["name"] == prediction["model"]["name"]
    assert prediction["predicted_class"] in report.conclusion and "Not for diagnosis" in report.conclusion
    assert report.conclusionCode[0].text == prediction["predicted_class"]
    assert report.effectiveDateTime is not None


def test_dicom_input_references_its_imaging_study(client: FlaskClient, auth) -> None:
    source = cr_dataset()
    answer = client.post(
        "/dicomweb/studies",
        data=multipart(("application/dicom", to_bytes(source))),
        headers={**auth, "Content-Type": RELATED},
    )
    request_id = answer.get_json()["00081199"]["Value"][0]["00081190"]["Value"][0].rsplit("/", 1)[1]
    report = R4B.DiagnosticReport.model_validate(_report(client, auth, request_id))
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{source.StudyInstanceUID}"
    finding = report.conclusionCode[0].coding[0]
    assert finding.system in ("http://snomed.info/sct", "urn:covidxray:codes")


def test_another_subjects_report_is_not_found(client: FlaskClient, auth, settings, sample_png) -> None:
    from covidxray.web.auth import issue_token

    prediction = client.post(
        "/api/v1/predict", data=sample_png, headers={**auth, "Content-Type": "image/png"}
    ).get_json()
    other = {"Authorization": f"Bearer {issue_token(settings, 'bob')}"}
    assert client.get(f"/api/v1/predictions/{prediction['id']}/fhir", headers=other).status_code == 404
    assert client.get(f"/api/v1/predictions/{prediction['id']}/fhir").status_code == 401
