"""The archive's per-file steps without Beam: decoding through `prepare`, the DICOM key, the CLI's hint."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from covidxray.archive.records import decode
from covidxray.cli import main
from covidxray.errors import ApiError
from tests.imaging.test_dicom import from_sample


def test_a_dicom_gets_the_same_sha256_every_time_and_not_the_original_files(sample_jpeg: bytes):
    import hashlib

    dicom = from_sample(sample_jpeg, "8-bit")
    first, tensor = decode("a.dcm", dicom, 224, 50_000_000)
    again, _ = decode("b.dcm", dicom, 224, 50_000_000)
    assert first.sha256 == again.sha256 != hashlib.sha256(dicom).hexdigest()
    assert first.format == "dicom" and tensor.shape == (224, 224, 1)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "missing_image"),
        (b"plain text", "unsupported_type"),
        (b"\x89PNG\r\n\x1a\n\0\0", "invalid_image"),
    ],
)
def test_unusable_bytes_raise_the_api_error(data: bytes, code: str):
    with pytest.raises(ApiError) as caught:
        decode("x.png", data, 224, 50_000_000)
    assert caught.value.code == code


def test_without_beam_the_command_says_how_to_get_it():
    if importlib.util.find_spec("apache_beam") is not None:
        pytest.skip("Beam is importable here")
    result = CliRunner().invoke(main, ["score-archive", "--input", "x/*", "--output", "out"])
    assert result.exit_code == 1
    assert "make beam-install" in result.output and ".venv-beam/bin/covidxray" in result.output
