"""Fixtures of the DICOM node tests: a real Orthanc (session), a listener on the port Orthanc knows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from covidxray import create_app
from covidxray.dicomnode import listener
from covidxray.dicomnode.results import ResultSender
from covidxray.predictors.keras import KerasPredictor
from covidxray.service import Services
from covidxray.settings import Settings
from tests.dicomnode.scu import SCU_AE
from tests.orthanc import AE_TITLE, PEER_AE, Orthanc, dicomweb_plugin, orthanc_binary, running_orthanc


@dataclass
class Node:
    """A running listener: its services, its result sender and its port."""

    services: Services
    sender: ResultSender
    port: int


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc with the DICOMweb plugin on free loopback ports (skips when Debian's packages are missing)."""
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary is None or plugin is None:
        pytest.skip("Debian's orthanc and orthanc-dicomweb are not installed (make test-deps installs them)")
    folder: Path = tmp_path_factory.mktemp("orthanc")
    with running_orthanc(folder, binary, plugin) as server:
        yield server


@pytest.fixture
def node_settings(settings: Settings, orthanc: Orthanc) -> Settings:
    """Settings whose results go to the test Orthanc over DIMSE."""
    return replace(
        settings,
        dicom_destination=f"dimse://{AE_TITLE}@127.0.0.1:{orthanc.dicom_port}",
        dicom_allowed_aes=(AE_TITLE, SCU_AE),
    )


@contextmanager
def running_node(settings: Settings, predictor: KerasPredictor, port: int) -> Iterator[Node]:
    """Our listener on `port`, with the services and result sender of `settings`."""
    app = create_app(backend="keras", settings=settings, predictor=predictor)
    services, sender = app.extensions["covidxray"], app.extensions["covidxray.dicom"]
    server = listener.start(services, sender, "127.0.0.1", port, PEER_AE, services.settings.dicom_allowed_aes)
    try:
        yield Node(services, sender, port)
    finally:
        server.shutdown()
        sender.stop(drain_seconds=0)


@pytest.fixture
def node(node_settings: Settings, predictor: KerasPredictor, orthanc: Orthanc) -> Iterator[Node]:
    """Our listener on the port Orthanc knows us by, its services and its result sender."""
    orthanc.clear()
    with running_node(node_settings, predictor, orthanc.peer_port) as running:
        yield running
