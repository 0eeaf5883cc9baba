"""COVIDXRAY_BURNED_IN: screen an upload for burnt-in text, refuse it or black it out of the stored copy.

`redact` (default) blacks out the text lines found in the stored copy and in the image drawn
under heatmaps, never in what the model sees; `refuse` raises BurnedInText (422) before
anything is stored; `keep` skips the check. The stored DICOM copy's `BurnedInAnnotation` says
what was done: `NO` once the text found was blacked out (with the Clean Pixel Data option in
its de-identification method), unchanged otherwise.
"""

from __future__ import annotations

import io
import logging
import shutil

import numpy as np
from PIL import Image, ImageOps

from covidxray.errors import BurnedInText
from covidxray.imaging.burned_in import Finding, bands, blacken, find_text, suspect_bands
from covidxray.imaging.prepare import Prepared

log = logging.getLogger(__name__)

_CLEAN_PIXELS = ("113101", "DCM", "Clean Pixel Data Option")  # PS3.16 CID 7050
SEEN = "the model saw the original pixels"
NOT_CHECKED = "burnt-in text was not checked: Debian's tesseract-ocr is not installed"


def screen(prepared: Prepared, kept: bytes, mode: str) -> Finding | None:
    """The burnt-in text of an upload (None: none found, or `keep`); BurnedInText under `refuse`."""
    if mode == "keep":
        return None
    names = suspect_bands(prepared.image)
    if prepared.format == "dicom" and _declared(kept):
        names = list(bands(1, 1))  # declared: every band, glyph-like or not
    if not names:
        return None
    if shutil.which("tesseract") is None:
        prepared.warnings.append(NOT_CHECKED)
        return None
    finding = find_text(prepared.image, names)
    if not finding.boxes:
        return None
    if mode == "refuse":
        raise BurnedInText()
    return finding


def redact(prepared: Prepared, kept: bytes, finding: Finding) -> bytes:
    """The stored copy with the text blacked out; also blacks out `prepared.image` (drawn under heatmaps)."""
    image = prepared.image
    pixels = blacken(np.asarray(image), finding.boxes, (1.0, 1.0), 0)
    prepared.image = Image.fromarray(pixels)
    scale = (prepared.width / image.width, prepared.height / image.height)
    cleaned = (
        _redact_dicom(kept, finding, scale)
        if prepared.format == "dicom"
        else _redact_picture(kept, finding, scale, prepared.format)
    )
    lines = len(finding.boxes)
    prepared.warnings.append(f"burnt-in text: {lines} text line(s) blacked out in the stored copy ({SEEN})")
    return cleaned


def _declared(kept: bytes) -> bool:
    """Whether a DICOM copy says BurnedInAnnotation = YES."""
    import pydicom  # here, as in `prepare`: only DICOM inputs load it

    try:
        ds = pydicom.dcmread(io.BytesIO(kept), stop_before_pixels=True)
        return str(ds.get("BurnedInAnnotation") or "").upper() == "YES"
    except Exception:
        return False


def _redact_dicom(kept: bytes, finding: Finding, scale: tuple[float, float]) -> bytes:
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(kept))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    pixels = ds.pixel_array
    dark = pixels.max() if str(ds.get("PhotometricInterpretation")).upper() == "MONOCHROME1" else pixels.min()
    fill = 0 if pixels.ndim == 3 and int(ds.get("SamplesPerPixel") or 1) > 1 else dark
    ds.PixelData = blacken(pixels, finding.boxes, scale, fill).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BurnedInAnnotation = "NO"
    method = ds.get("DeidentificationMethod") or []
    methods = [method] if isinstance(method, str) else list(method)
    ds.DeidentificationMethod = [*methods, "clean pixel data (Tesseract word lines blacked out)"]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _CLEAN_PIXELS
    ds.setdefault("DeidentificationMethodCodeSequence", []).value.append(code)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _redact_picture(kept: bytes, finding: Finding, scale: tuple[float, float], fmt: str) -> bytes:
    """A PNG, JPEG or GIF upload with the boxes blacked out, upright, in its own format."""
    picture = ImageOps.exif_transpose(Image.open(io.BytesIO(kept)))
    if picture.mode not in ("L", "RGB", "RGBA", "I;16", "I"):
        picture = picture.convert("RGB")
    pixels = blacken(np.asarray(picture), finding.boxes, scale, 0)
    out = io.BytesIO()
    cleaned = Image.fromarray(pixels)
    if fmt == "jpeg":
        cleaned.convert("RGB" if cleaned.mode == "RGBA" else cleaned.mode).save(out, "JPEG", quality=95)
    else:
        cleaned.save(out, "GIF" if fmt == "gif" else "PNG")
    return out.getvalue()
