"""DIMSE over TLS: the listener with mutual TLS, and results sent by `dimse+tls://` to an Orthanc
that speaks DICOM TLS."""

from __future__ import annotations

import ssl
import time
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from covidxray import create_app
from covidxray.dicomnode import listener
from covidxray.dicomnode.intake import receive
from covidxray.predictors.keras import KerasPredictor
from covidxray.settings import Settings
from tests.dicomnode.certs import Certificates, make_certificates
from tests.dicomnode.films import CR, cr_dataset, to_bytes
from tests.dicomnode.scu import SCU_AE
from tests.orthanc import AE_TITLE, PEER_AE, dicomweb_plugin, orthanc_binary, running_orthanc
from tests.ports import steady_port

pytestmark = pytest.mark.pacs


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path)


def _client(certs: Certificates, with_certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs.ca)
    if with_certificate:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    return context


def _associate(port: int, tls: ssl.SSLContext | None):
    ae = AE(ae_title=SCU_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title=PEER_AE, tls_args=(tls, "127.0.0.1") if tls else None)


def test_listener_with_mutual_tls_serves_only_clients_with_a_certificate(
    settings: Settings, predictor: KerasPredictor, certs: Certificates
) -> None:
    tls_settings = replace(
        settings, dicom_tls_cert=certs.server_cert, dicom_tls_key=certs.server_key, dicom_tls_ca=certs.ca
    )
    app = create_app(settings=tls_settings, predictor=predictor)
    context = listener.tls_context(tls_settings)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    port = steady_port()
    server = listener.start(app.extensions["covidxray"], None, "127.0.0.1", port, PEER_AE, (), context)
    try:
        assoc = _associate(port, _client(certs))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(cr_dataset()).Status == 0x0000
        assoc.release()
        assert not _associate(port, None).is_established  # plain DIMSE
        assert not _associate(port, _client(certs, with_certificate=False)).is_established
    finally:
        server.shutdown()


def test_results_go_by_dimse_over_tls_to_a_pacs_that_requires_it(
    settings: Settings,
    predictor: KerasPredictor,
    certs: Certificates,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary is None or plugin is None:
        pytest.skip("Debian's orthanc and orthanc-dicomweb are not installed (make test-deps installs them)")
    extra = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(certs.server_cert),
        "DicomTlsPrivateKey": str(certs.server_key),
        "DicomTlsTrustedCertificates": str(certs.ca),
        "DicomTlsRemoteCertificateRequired": True,
    }
    with running_orthanc(tmp_path_factory.mktemp("orthanc-tls"), binary, plugin, **extra) as pacs:
        sending = replace(
            settings,
            dicom_destination=f"dimse+tls://{AE_TITLE}@127.0.0.1:{pacs.dicom_port}",
            dicom_tls_cert=certs.client_cert,
            dicom_tls_key=certs.client_key,
            dicom_tls_ca=certs.ca,
        )
        app = create_app(settings=sending, predictor=predictor)
        services, sender = app.extensions["covidxray"], app.extensions["covidxray.dicom"]
        source = cr_dataset()
        try:
            receive(services, sender, to_bytes(source), subject="ae:TEST", source="dicom")
            deadline = time.monotonic() + 30
            while sender.pending() and time.monotonic() < deadline:
                time.sleep(0.25)
            assert sender.pending() == 0
        finally:
            sender.stop(drain_seconds=0)
        found = pacs.post(
            "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": source.StudyInstanceUID}}
        )
        assert len(found) == 2  # the SR and the secondary capture
        plain = replace(sending, dicom_destination=f"dimse://{AE_TITLE}@127.0.0.1:{pacs.dicom_port}")
        app = create_app(settings=plain, predictor=predictor)
        services, sender = app.extensions["covidxray"], app.extensions["covidxray.dicom"]
        sender.stop(drain_seconds=0)
        receive(services, sender, to_bytes(cr_dataset()), subject="ae:TEST", source="dicom")
        assert sender.ship_once(ignore_due=True) == 0 and sender.pending() == 2  # plain DIMSE is refused
