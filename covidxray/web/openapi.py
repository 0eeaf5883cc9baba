"""The OpenAPI 3 document of the JSON API."""

from __future__ import annotations

from typing import Any

from covidxray.labels import LABELS, UNCERTAIN
from covidxray.version import __version__
from covidxray.web.clinical import FLAGS, SEXES

_PROBS = {"type": "object", "properties": {label: {"type": "number"} for label in LABELS}}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": "stable error code, e.g. invalid_image (400), unsupported_type (415), "
                    "unsupported_modality or not_chest_radiograph (422), backend_unavailable (503)",
                },
                "message": {"type": "string"},
                "fields": {"type": "object"},
            },
        },
        "id": {"type": "string"},
    },
}
_PREDICTION = {
    "type": "object",
    "required": [
        "id",
        "created_at",
        "backend",
        "model",
        "predicted_class",
        "probabilities",
        "image",
        "warnings",
    ],
    "properties": {
        "id": {"type": "string", "description": "UUIDv7"},
        "created_at": {"type": "string", "format": "date-time"},
        "backend": {"type": "string", "enum": ["keras", "automl"]},
        "model": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
        },
        "status": {"type": "string"},
        "predicted_class": {"type": "string", "nullable": True, "enum": [*LABELS, UNCERTAIN, None]},
        "score": {"type": "number", "nullable": True},
        "probabilities": {**_PROBS, "nullable": True},
        "image": {
            "type": "object",
            "properties": {
                "sha256": {"type": "string"},
                "uri": {"type": "string"},
                "width": {"type": "integer"},
                "height": {"type": "integer"},
                "format": {"type": "string", "enum": ["png", "jpeg", "gif", "dicom"]},
            },
        },
        "clinical": {"type": "object"},
        "ood_score": {
            "type": "number",
            "nullable": True,
            "description": (
                "the gate's score: the larger of its density and layout tests, each over its threshold;"
                " higher is less like a frontal chest radiograph (null when off)"
            ),
        },
        "ood_threshold": {
            "type": "number",
            "nullable": True,
            "description": "the score above which the gate refuses (COVIDXRAY_OOD=refuse) or warns: 1.0",
        },
        "heatmap_url": {"type": "string", "nullable": True},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "latency_ms": {"type": "number"},
    },
}
_BATCH = {
    "type": "object",
    "required": ["results"],
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "oneOf": [{"$ref": "#/components/schemas/Prediction"}, {"$ref": "#/components/schemas/Error"}]
            },
        }
    },
}
_CLINICAL = {
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "sex": {"type": "string", "enum": list(SEXES)},
    "symptom_days": {"type": "integer", "minimum": 0, "maximum": 60},
    **{flag: {"type": "integer", "enum": [0, 1]} for flag in FLAGS},
}


def _errors(*codes: int) -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(code): {"description": "error", **ref} for code in codes}


def _predict_operation(summary: str) -> dict[str, Any]:
    multipart = {
        "type": "object",
        "properties": {
            "image": {
                "type": "string",
                "format": "binary",
                "description": "the X-ray (PNG, JPEG, DICOM, GIF)",
            },
            **_CLINICAL,
        },
    }
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": multipart},
                "image/png": binary,
                "image/jpeg": binary,
                "application/dicom": binary,
            },
        },
        "responses": {
            "200": {
                "description": "the prediction; for several `image` parts, `results` with one item per image",
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/Prediction"},
                                {"$ref": "#/components/schemas/Batch"},
                            ]
                        }
                    }
                },
            },
            **_errors(400, 401, 403, 413, 415, 422, 503),
        },
    }


def _by_id(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": [{"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {**ok, **_errors(401, 403, 404)},
    }


_FHIR = {"application/fhir+json": {"schema": {"type": "object", "required": ["resourceType"]}}}
_STOW_RESPONSE = {
    "type": "object",
    "description": "PS3.18 Store Instances Response Module as DICOM JSON: 00081199 ReferencedSOPSequence "
    "(each item's 00081190 RetrieveURL is the prediction), 00081198 FailedSOPSequence (each item's "
    "00081197 FailureReason: 0xA900 not a CR/DX radiograph or no pixel data, 0xC000 not DICOM or "
    "undecodable, 0xC001 not a chest radiograph, 0xC002 burnt-in text refused, 0xA700 backend unavailable)",
}


def _stow_operation() -> dict[str, Any]:
    dicom_json = {"application/dicom+json": {"schema": {"$ref": "#/components/schemas/StowResponse"}}}
    return {
        "summary": "STOW-RS: store DICOM radiographs (PS3.18 10.5); each is predicted like an upload",
        "security": [{"bearer": []}],
        "requestBody": {
            "required": True,
            "content": {
                'multipart/related; type="application/dicom"': {
                    "schema": {"type": "string", "format": "binary"}
                }
            },
        },
        "responses": {
            "200": {"description": "every instance stored", "content": dicom_json},
            "202": {"description": "some instances failed (FailedSOPSequence)", "content": dicom_json},
            "409": {"description": "no instance stored (FailedSOPSequence)", "content": dicom_json},
            **_errors(400, 401, 403, 413, 415),
        },
    }


def openapi_document() -> dict[str, Any]:
    """The API description served at `/api/openapi.json`."""
    prediction = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "covidxray",
            "version": __version__,
            "description": "Chest X-ray classification (covid, pneumonia, normal). Not for diagnosis.",
        },
        "paths": {
            "/api/v1/predict": {"post": _predict_operation("Predict an X-ray")},
            "/api/prediction": {
                "post": _predict_operation("Predict an X-ray (route of the original system)")
            },
            "/api/v1/predictions/{request_id}": {
                "get": _by_id("Read a prediction", {"200": {"description": "the prediction", **prediction}}),
                "delete": _by_id("Erase a prediction and its image", {"204": {"description": "erased"}}),
            },
            "/api/v1/predictions/{request_id}/fhir": {
                "get": _by_id(
                    "Read a prediction as an HL7 FHIR R4 DiagnosticReport",
                    {"200": {"description": "the DiagnosticReport", "content": _FHIR}},
                )
            },
            "/dicomweb/studies": {"post": _stow_operation()},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Prediction": _PREDICTION,
                "Error": _ERROR,
                "Batch": _BATCH,
                "StowResponse": _STOW_RESPONSE,
            },
        },
    }
