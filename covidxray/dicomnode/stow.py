"""DICOMweb STOW-RS (PS3.18 10.5): the multipart/related body in, the PS3.18 JSON response out.

Each `application/dicom` part goes through the use case like a C-STORE (`source = "stow"`);
a part of another type, or one the use case refuses, becomes a FailedSOPSequence item with a
failure reason (the listener's statuses), and nothing of it is stored. The answer is 200 when
every instance was stored, 202 when some failed, 409 when none was stored.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import pydicom

from covidxray.dicomnode.intake import receive
from covidxray.dicomnode.listener import INTERNAL, STATUSES
from covidxray.dicomnode.results import ResultSender
from covidxray.errors import ApiError, MissingImage, UnsupportedType
from covidxray.service import Services

log = logging.getLogger(__name__)

DICOM = "application/dicom"
CANNOT_UNDERSTAND = 0xC000


@dataclass
class StowOutcome:
    """What happened to each part: stored (SOP class, instance, prediction id) or failed (with reason)."""

    stored: list[tuple[str, str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def status(self) -> int:
        """200 all stored, 202 some failed, 409 none stored."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409


def boundary_of(mimetype: str, params: dict[str, str]) -> bytes:
    """The multipart boundary of a STOW-RS request; UnsupportedType (415) for any other media type."""
    kind = params.get("type", DICOM).strip('"').lower()
    if mimetype != "multipart/related" or kind != DICOM or not params.get("boundary"):
        raise UnsupportedType(
            'STOW-RS takes multipart/related; type="application/dicom" with a boundary (PS3.18 10.5)'
        )
    return params["boundary"].strip('"').encode()


def split_parts(body: bytes, boundary: bytes) -> list[tuple[str, bytes]]:
    """(content type, payload) of each part of a multipart body."""
    delimiter = b"\r\n--" + boundary
    chunks = (b"\r\n" + body).split(delimiter)[1:]
    parts = []
    for chunk in chunks:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            parts.append(("", b""))
            continue
        headers = dict(_header(line) for line in head.split(b"\r\n")[1:] if b":" in line)
        parts.append((headers.get("content-type", "").split(";")[0].strip().lower(), payload))
    if not parts:
        raise MissingImage("the multipart/related body has no parts")
    return parts


def _header(line: bytes) -> tuple[str, str]:
    name, _, value = line.decode("latin-1").partition(":")
    return name.strip().lower(), value.strip()


def store_parts(
    services: Services, sender: ResultSender | None, parts: list[tuple[str, bytes]], subject: str
) -> StowOutcome:
    """Predict each DICOM part; a failure of one part never stops the others."""
    outcome = StowOutcome()
    for kind, raw in parts:
        payload = as_part10(raw)
        sop_class, sop_instance = _uids(payload)
        if kind != DICOM:
            outcome.failed.append((sop_class, sop_instance, CANNOT_UNDERSTAND))
            continue
        try:
            record = receive(services, sender, payload, subject=subject, source="stow")
            outcome.stored.append((sop_class, sop_instance, record.id))
        except ApiError as exc:
            outcome.failed.append((sop_class, sop_instance, STATUSES.get(exc.code, CANNOT_UNDERSTAND)))
        except Exception:
            log.exception("stow part failed")
            outcome.failed.append((sop_class, sop_instance, INTERNAL))
    return outcome


def as_part10(payload: bytes) -> bytes:
    """A part that starts with its file meta group but lacks the preamble and `DICM` (as pydicom
    writes a dataset not read from a file, and some clients send it) as a PS3.10 file."""
    if payload[128:132] != b"DICM" and payload[:2] == b"\x02\x00":  # group 0002, little endian
        return bytes(128) + b"DICM" + payload
    return payload


def _uids(payload: bytes) -> tuple[str, str]:
    """The SOP class and instance UIDs of a part, as far as it can be read ("" when not)."""
    try:
        ds = pydicom.dcmread(
            io.BytesIO(payload), stop_before_pixels=True, specific_tags=[0x00080016, 0x00080018]
        )
        return str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    except Exception:
        return "", ""


def response_json(outcome: StowOutcome, prediction_url: Any) -> dict[str, Any]:
    """The PS3.18 Store Instances Response Module as DICOM JSON (`prediction_url(id)`: RetrieveURL)."""
    body: dict[str, Any] = {}
    if outcome.stored:
        body["00081199"] = {
            "vr": "SQ",
            "Value": [
                {**_reference(cls, uid), "00081190": {"vr": "UR", "Value": [prediction_url(pid)]}}
                for cls, uid, pid in outcome.stored
            ],
        }
    if outcome.failed:
        body["00081198"] = {
            "vr": "SQ",
            "Value": [
                {**_reference(cls, uid), "00081197": {"vr": "US", "Value": [reason]}}
                for cls, uid, reason in outcome.failed
            ],
        }
    return body


def _reference(sop_class: str, sop_instance: str) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for tag, value in (("00081150", sop_class), ("00081155", sop_instance)):
        item[tag] = {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}
    return item
