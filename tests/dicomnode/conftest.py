"""Fixtures of the DICOM node tests: a real Orthanc (session), a listener on the port Orthanc knows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.orthanc import Orthanc, dicomweb_plugin, orthanc_binary, running_orthanc


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc with the DICOMweb plugin on free loopback ports (skips when Debian's packages are missing)."""
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary is None or plugin is None:
        pytest.skip("Debian's orthanc and orthanc-dicomweb are not installed (make test-deps installs them)")
    folder: Path = tmp_path_factory.mktemp("orthanc")
    with running_orthanc(folder, binary, plugin) as server:
        yield server
