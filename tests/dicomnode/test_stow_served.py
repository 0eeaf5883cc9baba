"""STOW-RS over real HTTP: dicomweb-client stores into the service under gunicorn, whose results
reach Orthanc."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from requests import HTTPError

from covidxray.settings import Settings
from covidxray.web.auth import issue_token
from tests.dicomnode.films import cr_dataset
from tests.orthanc import AE_TITLE, Orthanc
from tests.servers import gunicorn

pytestmark = [pytest.mark.slow, pytest.mark.pacs]


def test_dicomweb_client_stores_and_the_results_reach_the_pacs(orthanc: Orthanc, tmp_path: Path) -> None:
    destination = f"dimse://{AE_TITLE}@127.0.0.1:{orthanc.dicom_port}"
    with gunicorn(tmp_path, workers=1, answer_timeout=5, COVIDXRAY_DICOM_DESTINATION=destination) as url:
        token = issue_token(Settings(data_dir=tmp_path).validated(), "modality")
        client = DICOMwebClient(f"{url}/dicomweb", headers={"Authorization": f"Bearer {token}"})
        first, second = cr_dataset(), cr_dataset(Modality="CT")
        answer = client.store_instances([first, second])  # 202: one stored, one failed
        assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
        assert answer.FailedSOPSequence[0].FailureReason == 0xA900
        with pytest.raises(HTTPError, match="401"):
            DICOMwebClient(f"{url}/dicomweb").store_instances([cr_dataset()])
        deadline = time.monotonic() + 30
        query = {"Level": "Instance", "Query": {"StudyInstanceUID": first.StudyInstanceUID}}
        while len(orthanc.post("/tools/find", query)) < 2 and time.monotonic() < deadline:
            time.sleep(0.25)
        assert len(orthanc.post("/tools/find", query)) == 2  # its SR and secondary capture
