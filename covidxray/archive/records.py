"""One archive file from bytes to its JSON line: decoded through `prepare`, scored by the serving code.

No Beam here: the pipeline's steps call these functions, and so can a test.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from covidxray.errors import ApiError, MissingImage, NotChestRadiograph
from covidxray.imaging.prepare import Prepared, prepare
from covidxray.predictors.calibration import decide, softmax
from covidxray.predictors.gate import Guard, Verdict
from covidxray.predictors.runtime import ModelInfo

#: The attributes whose new values the de-identified DICOM copy gets (PS3.15 action U).
_NEW_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_PLACEHOLDER = "0"  # what they hold while the copy is hashed to seed them


@dataclass(frozen=True)
class Decoded:
    """What the JSON line needs of one decoded file besides its scores (nothing identifying)."""

    path: str
    sha256: str  # of the file, or for DICOM of its de-identified copy
    format: str
    width: int
    height: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scoring:
    """How scores become answers: the model's identity and temperature, the gate, the threshold."""

    info: ModelInfo
    guard: Guard | None
    uncertain_below: float = 0.6

    @property
    def model(self) -> dict[str, str]:
        """The model's name and version, as the API reports them."""
        return {"name": self.info.name, "version": self.info.version}


def decode(path: str, data: bytes, size: int, max_pixels: int) -> tuple[Decoded, np.ndarray]:
    """Decode one file through the ONE preprocessing function: its description and the model's input
    tensor (size, size, 1). ApiError for unusable input (MissingImage for an empty file)."""
    if not data:
        raise MissingImage("the file is empty")
    prepared = prepare(data, size, max_pixels=max_pixels)
    decoded = Decoded(
        path=path,
        sha256=hashlib.sha256(kept_bytes(prepared, data)).hexdigest(),
        format=prepared.format,
        width=prepared.width,
        height=prepared.height,
        warnings=tuple(prepared.warnings),
    )
    return decoded, prepared.tensor


def kept_bytes(prepared: Prepared, data: bytes) -> bytes:
    """The bytes the sha256 refers to: the file, or for DICOM its de-identified copy.

    The copy's new UIDs are derived from the copy itself (never from the original's identifiers), so
    the same film gets the same sha256 on every run.
    """
    if prepared.stored is None:
        return data
    import pydicom
    from pydicom.uid import UID, generate_uid

    copy = pydicom.dcmread(io.BytesIO(prepared.stored))
    for keyword in _NEW_UIDS:
        setattr(copy, keyword, _PLACEHOLDER)
    copy.file_meta.MediaStorageSOPInstanceUID = UID(_PLACEHOLDER)
    seed = hashlib.sha256(_dicom_bytes(copy)).hexdigest()
    for keyword in _NEW_UIDS:
        setattr(copy, keyword, generate_uid(entropy_srcs=[seed, keyword]))
    copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    return _dicom_bytes(copy)


def _dicom_bytes(dataset: Any) -> bytes:
    """A pydicom dataset written as a DICOM file."""
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def score(decoded: Decoded, logits: np.ndarray, summary: np.ndarray, scoring: Scoring) -> dict[str, Any]:
    """The result line of one scored file, as `covidxray predict --json` rounds it; NotChestRadiograph
    when the gate refuses it (COVIDXRAY_OOD=refuse)."""
    info = scoring.info
    probs = softmax(logits, info.temperature)
    verdict = _verdict(decoded, summary, scoring.guard)
    refusal = verdict.message() if verdict is not None and not verdict.passed else None
    if refusal and scoring.guard is not None and scoring.guard.mode == "refuse":
        raise NotChestRadiograph(refusal)
    by_label = dict(zip(info.labels, probs.tolist(), strict=True))
    predicted, top = decide(by_label, scoring.uncertain_below, flagged=refusal is not None)
    return {
        "file": decoded.path,
        "path": decoded.path,
        "sha256": decoded.sha256,
        "predicted_class": predicted,
        "score": round(top, 4),
        "probabilities": {k: round(v, 4) for k, v in by_label.items()},
        "model": scoring.model,
        "image": {"format": decoded.format, "width": decoded.width, "height": decoded.height},
        "ood_score": round(verdict.score, 4) if verdict else None,
        "ood_threshold": round(verdict.threshold, 4) if verdict else None,
        "warnings": [*decoded.warnings, *([refusal] if refusal else [])],
    }


def _verdict(decoded: Decoded, summary: np.ndarray, guard: Guard | None) -> Verdict | None:
    """The gate's verdict from its summary of the classifier's feature maps (None when the gate is off)."""
    if guard is None:
        return None
    return guard.gate.judge(np.asarray(summary, np.float32), list(decoded.warnings))


def failure(path: str, error: ApiError, model: dict[str, str]) -> dict[str, Any]:
    """The dead-letter line of a file that could not be scored, in the API's error shape."""
    return {
        "path": path,
        "error": {"code": error.code, "message": error.message},
        "status": error.status,
        "model": model,
    }


def record_key(line: dict[str, Any]) -> str:
    """What makes a line unique: the image (sha256, or the path of a failure) and the model version."""
    return f"{line.get('sha256') or line['path']}|{line['model']['version']}"
