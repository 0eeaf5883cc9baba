"""DICOMweb STOW-RS (`POST /dicomweb/studies`) and the FHIR view of a prediction.

The DICOM node's modules are imported by the routes, not here, so that a worker starts without them
(they take about a second and 30 MB)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, json, request, url_for

from covidxray import service
from covidxray.service import current_services
from covidxray.web.auth import require

bp = Blueprint("dicomweb", __name__)


@bp.post("/dicomweb/studies")
@require("predict")
def store_instances() -> Any:
    """Store instances (PS3.18 10.5): each DICOM part predicted; the PS3.18 JSON response."""
    from covidxray.dicomnode import stow  # pydicom and pynetdicom load on the first DICOMweb request

    boundary = stow.boundary_of(request.mimetype, request.mimetype_params)
    parts = stow.split_parts(request.get_data(), boundary)
    sender = current_app.extensions.get("covidxray.dicom")
    outcome = stow.store_parts(current_services(), sender, parts, g.principal.subject)

    def prediction_url(request_id: str) -> str:
        return url_for("api.get_prediction", request_id=request_id, _external=True)

    body = json.dumps(stow.response_json(outcome, prediction_url))
    return Response(body, status=outcome.status, mimetype="application/dicom+json")


@bp.get("/api/v1/predictions/<request_id>/fhir")
@require("read")
def fhir_report(request_id: str) -> Any:
    """The prediction as an HL7 FHIR R4 DiagnosticReport."""
    from covidxray.dicomnode.fhir import diagnostic_report  # highdicom's codes load on first use

    record = service.find(current_services(), request_id, g.principal.subject, g.principal.allows("admin"))
    body = json.dumps(diagnostic_report(record, request.url_root.rstrip("/")))
    return Response(body, mimetype="application/fhir+json")
