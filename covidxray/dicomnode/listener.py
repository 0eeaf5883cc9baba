"""The DIMSE C-STORE receiver (`covidxray dicom-listen`): a pynetdicom storage SCP.

Accepts CR, DX for presentation and Secondary Capture storage (any transfer syntax) and
Verification (C-ECHO); every other SOP class is refused at association negotiation, as is a
calling AE outside `COVIDXRAY_DICOM_ALLOWED_AES` (when set). Each instance goes through the use
case with `source = "dicom"`. Failure statuses (PS3.4 B.2.3; the 0xC0xx codes are ours):

| status | when |
| --- | --- |
| 0xA900 | not a CR/DX radiograph (modality, for processing) or no pixel data (`unsupported_modality`) |
| 0xC000 | undecodable: truncated pixel data, a transfer syntax we cannot decode (`invalid_image`) |
| 0xC001 | not a frontal chest radiograph (`not_chest_radiograph`; logged as `refused`, as an upload) |
| 0xC002 | text burnt into the pixels under COVIDXRAY_BURNED_IN=refuse (`burned_in_text`) |
| 0xA700 | the prediction backend is unavailable (`backend_unavailable`): retry later |
| 0xC0FF | an internal error (a bug, never the input) |

Nothing is stored for 0xA900 and 0xC000; the listener keeps serving after any of them.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.transport import ThreadedAssociationServer

from covidxray.dicomnode.intake import receive
from covidxray.dicomnode.results import ResultSender
from covidxray.errors import ApiError
from covidxray.service import Services
from covidxray.settings import Settings

log = logging.getLogger(__name__)

STORAGE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
)
VERIFICATION = UID("1.2.840.10008.1.1")
MAX_ASSOCIATIONS = 32
STATUSES = {
    "unsupported_modality": 0xA900,
    "invalid_image": 0xC000,
    "unsupported_type": 0xC000,
    "too_large": 0xC000,
    "not_chest_radiograph": 0xC001,
    "burned_in_text": 0xC002,
    "backend_unavailable": 0xA700,
}
INTERNAL = 0xC0FF


def make_ae(ae_title: str, allowed_aes: tuple[str, ...]) -> AE:
    """The application entity: our storage and verification contexts, the calling-AE allow-list."""
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.require_calling_aet = list(allowed_aes)
    for sop_class in STORAGE_CLASSES:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(VERIFICATION)
    return ae


def store_status(event: Any, services: Services, sender: ResultSender | None) -> Dataset:
    """Handle one C-STORE: the use case, then a status dataset (with an ErrorComment on failure)."""
    status = Dataset()
    calling = str(event.assoc.requestor.ae_title).strip()
    try:
        receive(services, sender, event.encoded_dataset(), subject=f"ae:{calling}", source="dicom")
        status.Status = 0x0000
    except ApiError as exc:
        status.Status = STATUSES.get(exc.code, 0xC000)
        status.ErrorComment = f"{exc.code}: {exc.message}"[:64]
        log.info("c-store refused", extra={"code": exc.code, "status": hex(status.Status)})
    except Exception:
        log.exception("c-store failed")
        status.Status = INTERNAL
        status.ErrorComment = "internal error"
    return status


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context (None: plain DIMSE); with a CA, clients must present a certificate."""
    if settings.dicom_tls_cert is None or settings.dicom_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
    if settings.dicom_tls_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(settings.dicom_tls_ca)
    return context


def start(
    services: Services,
    sender: ResultSender | None,
    host: str,
    port: int,
    ae_title: str,
    allowed: tuple[str, ...],
    tls: ssl.SSLContext | None = None,
) -> ThreadedAssociationServer:
    """Listen on host:port (over TLS with `tls`) in background threads; the caller shuts it down."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines name SOP instances
    ae = make_ae(ae_title, allowed)
    handlers: list[Any] = [(evt.EVT_C_STORE, store_status, [services, sender])]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=tls)
    assert server is not None  # not blocking: the server is returned
    log.info("dicom listener started", extra={"port": port, "allow_list": bool(allowed), "tls": bool(tls)})
    return server
