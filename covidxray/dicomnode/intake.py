"""One DICOM instance through the use case (checks, de-identified copy stored, record, prediction),
then, with a destination, its SR and secondary capture queued for the PACS."""

from __future__ import annotations

import io

import pydicom
from PIL import Image

from covidxray import service
from covidxray.backends.requestlog import PredictionRecord
from covidxray.dicomnode.results import ResultSender
from covidxray.imaging.prepare import Prepared
from covidxray.service import Services


def receive(
    services: Services, sender: ResultSender | None, data: bytes, subject: str, source: str
) -> PredictionRecord:
    """Predict one DICOM file (`source`: dicom or stow); queue its results when a sender is set."""
    explain = sender is not None
    record, film = service.predict_upload(services, data, {}, subject, explain=explain, source=source)
    if sender is not None and record.status == "ok":
        original = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        sender.enqueue(original, record, _picture(services, record, film))
    return record


def _picture(services: Services, record: PredictionRecord, film: Prepared) -> Image.Image:
    """The class activation map over the film, or the film itself when the backend gives none (burnt-in
    text blacked out in both, as in the stored copy)."""
    if record.heatmap_uri:
        return Image.open(io.BytesIO(service.heatmap_png(services, record, film))).convert("RGB")
    return film.image
