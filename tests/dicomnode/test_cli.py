"""`covidxray dicom-listen` as a process, and the DICOM node's settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from covidxray.settings import ConfigError, Settings
from tests.dicomnode.films import cr_dataset
from tests.dicomnode.scu import associate, store
from tests.ports import steady_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dicom_listen_answers_echo_and_store_then_stops_on_sigterm(tmp_path: Path) -> None:
    port = steady_port()
    env = {
        **os.environ,
        "COVIDXRAY_DATA_DIR": str(tmp_path),
        "COVIDXRAY_OOD": "off",
        "COVIDXRAY_DICOM_ALLOWED_AES": "TESTSCU",
    }
    command = [
        str(Path(sys.executable).parent / "covidxray"),
        "dicom-listen",
        "--port",
        str(port),
        "--ae-title",
        "NODE1",
    ]
    with (tmp_path / "listen.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assoc = associate(port, [], called="NODE1")
            if assoc.is_established:
                break
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "listen.log"
            ).read_text()
            time.sleep(0.5)
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        assert [s.Status for s in store(port, [cr_dataset()])] == [0x0000]
        assert not associate(port, [], calling="OTHER", called="NODE1").is_established
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COVIDXRAY_DICOM_AE_TITLE": "A" * 17}, "AE title"),
        ({"COVIDXRAY_DICOM_ALLOWED_AES": "GOOD,BAD\\AE"}, "AE title"),
        ({"COVIDXRAY_DICOM_DESTINATION": "ftp://pacs"}, "COVIDXRAY_DICOM_DESTINATION"),
        ({"COVIDXRAY_BURNED_IN": "blur"}, "COVIDXRAY_BURNED_IN"),
        ({"COVIDXRAY_DICOM_TLS_CERT": "/etc/ssl/node.pem"}, "COVIDXRAY_DICOM_TLS_KEY"),
    ],
)
def test_bad_dicom_settings_are_refused(monkeypatch, tmp_path, env: dict[str, str], message: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(data_dir=tmp_path).validated()


def test_dicom_settings_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("COVIDXRAY_DICOM_ALLOWED_AES", " ORTHANC , MODALITY1,")
    monkeypatch.setenv("COVIDXRAY_DICOM_DESTINATION", "dimse://ORTHANC@127.0.0.1:4242")
    settings = Settings.from_env(data_dir=tmp_path).validated()
    assert settings.dicom_allowed_aes == ("ORTHANC", "MODALITY1")
    assert (settings.dicom_ae_title, settings.burned_in) == ("COVIDXRAY", "redact")
