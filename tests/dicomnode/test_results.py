"""The SR and the secondary capture we write: valid per dciodvfy, and saying what they should."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from PIL import Image

from covidxray.dicomnode.destination import parse_destination
from covidxray.dicomnode.sc import build_sc
from covidxray.dicomnode.sr import NOTICE, build_sr
from covidxray.settings import ConfigError
from tests.dicomnode.films import SAMPLES, cr_dataset
from tests.helpers import make_record


def dciodvfy(ds: object, path: Path) -> list[str]:
    """dciodvfy's error lines for a dataset written to `path` (warnings pass)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("Debian's dicom3tools (dciodvfy) is not installed (make test-deps installs it)")
    ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def test_sr_is_valid_and_carries_finding_probabilities_and_notice(tmp_path: Path) -> None:
    source, record = cr_dataset(), make_record(predicted_class="covid", score=0.8)
    record.probabilities = {"covid": 0.8, "pneumonia": 0.15, "normal": 0.05}
    sr = build_sr(source, record, hd.UID())
    assert dciodvfy(sr, tmp_path / "sr.dcm") == []
    text = str(sr)
    assert "840539006" in text and "p-pneumonia" in text
    assert NOTICE in [item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"]
    assert sr.PatientID == source.PatientID and sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED"


def test_sc_is_valid_references_its_source_and_keeps_the_image_clear(tmp_path: Path) -> None:
    source = cr_dataset()
    picture = Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).convert("RGB")
    sc = build_sc(source, make_record(), picture)
    assert dciodvfy(sc, tmp_path / "sc.dcm") == []
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = sc.pixel_array
    assert sc.Rows > picture.height  # the caption is in a margin below the image
    assert np.array_equal(pixels[: picture.height], np.asarray(picture))  # never over the lungs


@pytest.mark.parametrize(
    "uri", ["dimse://ORTHANC@pacs:104", "dicomweb+http://pacs:8042/dicom-web", "dicomweb+https://pacs/dw"]
)
def test_destinations_parse(uri: str) -> None:
    assert parse_destination(uri).uri == uri


@pytest.mark.parametrize("uri", ["dimse://pacs:104", "http://pacs/dicom-web", "dimse://A@pacs:99999"])
def test_bad_destination_is_a_config_error(uri: str) -> None:
    with pytest.raises(ConfigError, match="COVIDXRAY_DICOM_DESTINATION"):
        parse_destination(uri)
