"""Where results go (`COVIDXRAY_DICOM_DESTINATION`) and how one batch of DICOM files is sent there.

`dimse://AE@host:port` (C-STORE over one association per batch; `dimse+tls://…` over TLS, trusting
COVIDXRAY_DICOM_TLS_CA or the system's CAs and presenting our certificate when one is set) or `dicomweb+http://host:port/path`
(`dicomweb+https://…`: STOW-RS to `<path>/studies`). Each send answers, per file, None (delivered)
or why it failed; the outbox retries the failed ones later.
"""

from __future__ import annotations

import io
import json
import logging
import re
import ssl
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import pydicom
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom import AE

from covidxray.settings import ConfigError, Settings

log = logging.getLogger(__name__)

TIMEOUT = 30.0
_DIMSE = re.compile(r"^dimse(?P<tls>\+tls)?://(?P<ae>[^@/]{1,16})@(?P<host>[^:/]+):(?P<port>\d{1,5})$")
_DICOMWEB = re.compile(r"^dicomweb\+(?P<url>https?://[^/]+(/.*)?)$")
_OK_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the warnings that still stored it
_RESULT_CLASSES = (ComprehensiveSRStorage, SecondaryCaptureImageStorage)


@dataclass(frozen=True)
class Destination:
    """A parsed destination: a DIMSE peer (ae_title, host, port) or a DICOMweb base URL."""

    uri: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""
    tls: bool = False

    @property
    def dimse(self) -> bool:
        """True for a DIMSE peer."""
        return bool(self.ae_title)


def parse_destination(uri: str) -> Destination:
    """Parse `COVIDXRAY_DICOM_DESTINATION`; ConfigError names the accepted forms."""
    if match := _DIMSE.match(uri):
        port = int(match["port"])
        if 0 < port < 65536:
            ae, host = match["ae"].strip(), match["host"]
            return Destination(uri, ae_title=ae, host=host, port=port, tls=bool(match["tls"]))
    if match := _DICOMWEB.match(uri):
        return Destination(uri, url=match["url"].rstrip("/"))
    raise ConfigError(
        "COVIDXRAY_DICOM_DESTINATION must be dimse://AE@host:port, dimse+tls://AE@host:port, "
        f"dicomweb+http://host:port/path or dicomweb+https://host:port/path; got {uri!r}"
    )


def client_context(settings: Settings) -> ssl.SSLContext:
    """TLS for result C-STOREs: the peer checked against COVIDXRAY_DICOM_TLS_CA (else the system's
    CAs), our certificate presented when COVIDXRAY_DICOM_TLS_CERT is set."""
    context = ssl.create_default_context(cafile=settings.dicom_tls_ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.dicom_tls_cert and settings.dicom_tls_key:
        context.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
    return context


def send(
    destination: Destination, files: list[bytes], calling_ae: str, tls: ssl.SSLContext | None = None
) -> list[str | None]:
    """Send `files` (DICOM files) to `destination`; per file None (delivered) or the failure."""
    if destination.dimse:
        return _c_store(destination, files, calling_ae, tls if destination.tls else None)
    return _stow(destination, files)


def _c_store(
    destination: Destination, files: list[bytes], calling_ae: str, tls: ssl.SSLContext | None
) -> list[str | None]:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    for sop_class in _RESULT_CLASSES:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    tls_args = (tls, destination.host) if tls is not None else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        return ["association refused or peer unreachable"] * len(files)
    reasons: list[str | None] = []
    try:
        for data in files:
            status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data)))
            code = int(status.Status) if "Status" in status else None
            reasons.append(None if code in _OK_STATUSES else f"C-STORE status {code}")
    finally:
        assoc.release() if assoc.is_established else assoc.abort()
    return reasons + ["association lost"] * (len(files) - len(reasons))


def _stow(destination: Destination, files: list[bytes]) -> list[str | None]:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n"
            for data in files
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    request = urllib.request.Request(
        destination.url + "/studies",
        data=body,
        method="POST",
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    except OSError as exc:
        return [f"STOW-RS unreachable ({type(exc).__name__})"] * len(files)
    if status == 200:
        return [None] * len(files)
    failed = _failed_uids(answer) if status == 202 else None
    if failed is None:
        return [f"STOW-RS status {status}"] * len(files)
    uids = [str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID) for data in files]
    return ["STOW-RS refused it" if uid in failed else None for uid in uids]


def _failed_uids(answer: bytes) -> set[str] | None:
    """The SOP instance UIDs of a PS3.18 response's FailedSOPSequence (None: unreadable)."""
    try:
        items = json.loads(answer).get("00081198", {}).get("Value", [])
        return {item["00081155"]["Value"][0] for item in items}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
