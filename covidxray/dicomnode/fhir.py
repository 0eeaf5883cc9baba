"""A prediction as an HL7 FHIR R4 DiagnosticReport (validated against fhir.resources' R4B models
in the tests, wire-compatible with R4 for these resources).

`preliminary` (a model's output, never a final report), category Radiology (HL7 v2-0074 RAD)
and imaging, code LOINC 36554-4 "XR Chest Single view", the finding as `conclusionCode` (SNOMED
CT; our own code system for `uncertain`), one contained Observation per class with its
probability, the model as a contained Device (each Observation's `device`, and the report's
`algorithm` extension, since R4 allows no Device as a report's performer), and, for DICOM
inputs, the ImagingStudy by its Study Instance UID.
"""

from __future__ import annotations

from typing import Any

from covidxray.backends.requestlog import PredictionRecord
from covidxray.dicomnode import codes
from covidxray.labels import LABELS, UNCERTAIN

ALGORITHM_EXTENSION = "urn:covidxray:fhir:algorithm"
NOTICE = "Not for diagnosis: a research model's output; a radiologist reads the study."
_CATEGORY = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"},
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging",
            "display": "Imaging",
        },
    ]
}
_UCUM = "http://unitsofmeasure.org"


def diagnostic_report(record: PredictionRecord, base_url: str) -> dict[str, Any]:
    """The DiagnosticReport of one prediction (`base_url`: the service's, for the full URL)."""
    when = record.created_at[:19] + "Z"
    finding = codes.FINDINGS[record.predicted_class or UNCERTAIN]
    observations = [_observation(label, p, when) for label, p in (record.probabilities or {}).items()]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": record.id,
        "contained": [_device(record), *observations],
        "extension": [{"url": ALGORITHM_EXTENSION, "valueReference": {"reference": "#model"}}],
        "identifier": [{"system": f"{base_url}/api/v1/predictions", "value": record.id}],
        "status": "preliminary",
        "category": [_CATEGORY],
        "code": {
            "coding": [
                {"system": codes.LOINC_URI, "code": codes.STUDY_LOINC[0], "display": codes.STUDY_LOINC[1]}
            ]
        },
        "effectiveDateTime": when,
        "issued": when,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": _conclusion(record),
        "conclusionCode": [{"coding": [codes.coding(finding)], "text": record.predicted_class or UNCERTAIN}],
    }
    study_uid = record.dicom.get("study_uid")
    if study_uid:
        report["imagingStudy"] = [
            {
                "type": "ImagingStudy",
                "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"},
            }
        ]
    return report


def _observation(label: str, probability: float, when: str) -> dict[str, Any]:
    assert label in LABELS
    return {
        "resourceType": "Observation",
        "id": f"p-{label}",
        "status": "preliminary",
        "category": [{"coding": [_CATEGORY["coding"][1]]}],
        "code": {"coding": [codes.coding(codes.PROBABILITIES[label])], "text": f"probability of {label}"},
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": round(float(probability), 6),
            "unit": "probability",
            "system": _UCUM,
            "code": "1",
        },
        "device": {"reference": "#model"},
    }


def _device(record: PredictionRecord) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": "model",
        "manufacturer": "covidxray",
        "deviceName": [{"name": record.model_name, "type": "model-name"}],
        "version": [{"value": record.model_version}],
    }


def _conclusion(record: PredictionRecord) -> str:
    top = record.predicted_class or UNCERTAIN
    score = f" ({record.score:.2f})" if record.score is not None else ""
    return f"{top}{score}, {record.model_name} {record.model_version}. {NOTICE}"
