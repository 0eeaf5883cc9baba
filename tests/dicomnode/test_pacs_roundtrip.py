"""Round trips with a real Orthanc: a CR pushed from the PACS comes back as an SR and an SC in its
study; results wait while the PACS is down and arrive once; 20 associations × 5 images at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from covidxray import create_app
from covidxray.backends.requestlog import SqliteRequestLog
from covidxray.dicomnode.intake import receive
from covidxray.predictors.keras import KerasPredictor
from covidxray.settings import Settings
from tests.dicomnode.conftest import Node, running_node
from tests.dicomnode.films import PATIENT, cr_dataset, sample_pixels, to_bytes
from tests.dicomnode.relay import Relay
from tests.dicomnode.scu import store
from tests.orthanc import AE_TITLE, PEER, Orthanc, dicomweb_plugin, orthanc_binary, running_orthanc

pytestmark = pytest.mark.pacs

SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


def wait_for(condition: Callable[[], Any], timeout: float = 180.0) -> Any:
    """Poll `condition` until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.25)
    raise AssertionError("timed out waiting")


def results_in(orthanc: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """SOP class -> SOP instance UIDs of the study's instances at the PACS (QIDO-RS)."""
    found: dict[str, list[str]] = {}
    for item in DICOMwebClient(orthanc.dicomweb).search_for_instances(study_instance_uid=study_uid):
        found.setdefault(item["00080016"]["Value"][0], []).append(item["00080018"]["Value"][0])
    return found


def _numbers(sr: Dataset) -> dict[str, float]:
    """Code value -> numeric value of every NUM item in the SR's content tree."""
    numbers: dict[str, float] = {}
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        if item.ValueType == "NUM":
            code = item.ConceptNameCodeSequence[0].CodeValue
            numbers[code] = float(item.MeasuredValueSequence[0].NumericValue)
        stack.extend(item.get("ContentSequence", []))
    return numbers


def test_cr_pushed_from_orthanc_comes_back_as_sr_and_sc_in_its_study(
    node: Node, orthanc: Orthanc, tmp_path: Path
) -> None:
    source = cr_dataset()
    instance = orthanc.post("/instances", to_bytes(source))["ID"]
    orthanc.post(f"/modalities/{PEER}/store", {"Resources": [instance], "Synchronous": True})
    study = str(source.StudyInstanceUID)
    found = wait_for(lambda: (r := results_in(orthanc, study)) and SR_CLASS in r and SC_CLASS in r and r)
    assert len(found[SR_CLASS]) == len(found[SC_CLASS]) == 1
    client = DICOMwebClient(orthanc.dicomweb)
    [sr_meta] = client.search_for_instances(study, search_filters={"SOPClassUID": SR_CLASS})
    sr = client.retrieve_instance(study, sr_meta["0020000E"]["Value"][0], found[SR_CLASS][0])
    [sc_meta] = client.search_for_instances(study, search_filters={"SOPClassUID": SC_CLASS})
    sc = client.retrieve_instance(study, sc_meta["0020000E"]["Value"][0], found[SC_CLASS][0])

    [record] = SqliteRequestLog(tmp_path / "requests.sqlite3").search(_all())
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    assert report.PatientID == PATIENT["PatientID"] and report.StudyInstanceUID == study
    assert report.SeriesInstanceUID != source.SeriesInstanceUID  # a new series
    numbers = _numbers(sr)
    assert {k: round(v, 4) for k, v in numbers.items()} == {
        f"p-{label}": round(p, 4) for label, p in (record.probabilities or {}).items()
    }
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.PatientID == PATIENT["PatientID"] and sc.StudyInstanceUID == study
    assert sc.BurnedInAnnotation == "YES" and sc.SamplesPerPixel == 3
    assert record.source == "dicom"


def _all() -> Any:
    from covidxray.backends.requestlog import HistoryQuery

    return HistoryQuery(limit=1000)


def test_results_wait_while_the_pacs_is_down_and_arrive_once(
    settings: Settings, predictor: KerasPredictor, orthanc: Orthanc, tmp_path: Path
) -> None:
    relay = Relay(("127.0.0.1", orthanc.dicom_port))  # refuses connections until started
    down = replace(settings, dicom_destination=f"dimse://{AE_TITLE}@127.0.0.1:{relay.port}")
    app = create_app(settings=down, predictor=predictor)
    services, sender = app.extensions["covidxray"], app.extensions["covidxray.dicom"]
    source = cr_dataset()
    receive(services, sender, to_bytes(source), subject="ae:TEST", source="dicom")
    time.sleep(1.5)  # the sender tries, fails and backs off
    assert sender.pending() == 2
    assert results_in(orthanc, str(source.StudyInstanceUID)) == {}
    ready = app.test_client().get("/readyz")  # the queue is told, never judged
    assert ready.status_code == 200
    assert ready.get_json()["dicom_results"]["destination"] == "dimse"
    assert ready.get_json()["dicom_results"]["depth"] == 2
    relay.start()
    try:
        wait_for(lambda: sender.pending() == 0, timeout=120)
        found = results_in(orthanc, str(source.StudyInstanceUID))
        assert {k: len(v) for k, v in found.items()} == {SR_CLASS: 1, SC_CLASS: 1}
        assert sender.ship_once(ignore_due=True) == 0  # nothing left to send twice
    finally:
        sender.stop(drain_seconds=0)
        relay.stop()
    outbox = tmp_path / "dicom-outbox.sqlite3"
    assert PATIENT["PatientID"].encode() not in outbox.read_bytes()  # delivered: overwritten, not kept
    for path in (tmp_path / "uploads").rglob("*"):
        assert not path.is_file() or PATIENT["PatientID"].encode() not in path.read_bytes()


def test_twenty_associations_of_five_images_all_answered_all_results_once(
    node: Node, orthanc: Orthanc
) -> None:
    study = generate_uid()
    batches = [[cr_dataset(sample_pixels(96, index=(i + j) % 7), study) for j in range(5)] for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda batch: store(node.port, batch), batches))
    assert [s.Status for batch in answers for s in batch] == [0x0000] * 100
    wait_for(lambda: node.sender.pending() == 0, timeout=300)
    found = results_in(orthanc, study)
    assert {k: len(set(v)) for k, v in found.items()} == {SR_CLASS: 100, SC_CLASS: 100}
    assert {k: len(v) for k, v in found.items()} == {SR_CLASS: 100, SC_CLASS: 100}


def test_readme_lua_script_routes_a_chest_film_once(
    settings: Settings, predictor: KerasPredictor, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """deploy/orthanc/route-to-covidxray.lua in a PACS of its own: the CR goes out once, results come back."""
    script = Path(__file__).resolve().parents[2] / "deploy" / "orthanc" / "route-to-covidxray.lua"
    folder = tmp_path_factory.mktemp("orthanc-lua")
    extra = {"LuaScripts": [str(script)], "UserMetadata": {"CovidxraySent": 4500}}
    with running_orthanc(folder, orthanc_binary() or "", dicomweb_plugin() or "", **extra) as pacs:
        routed = replace(
            settings,
            dicom_destination=f"dimse://{AE_TITLE}@127.0.0.1:{pacs.dicom_port}",
            dicom_allowed_aes=(AE_TITLE,),
        )
        with running_node(routed, predictor, pacs.peer_port) as node:
            source = cr_dataset()
            pacs.post("/instances", to_bytes(source))
            study = str(source.StudyInstanceUID)
            wait_for(lambda: len(results_in(pacs, study)) == 3, timeout=180)  # CR, SR, SC
            time.sleep(3)  # the study turns stable again with the results: nothing more is sent
            found = results_in(pacs, study)
            assert {k: len(v) for k, v in found.items() if k in (SR_CLASS, SC_CLASS)} == {
                SR_CLASS: 1,
                SC_CLASS: 1,
            }
            assert node.services.log.count() == 1  # type: ignore[attr-defined]


def test_results_go_by_stow_rs_to_a_dicomweb_destination(
    settings: Settings, predictor: KerasPredictor, orthanc: Orthanc
) -> None:
    stow = replace(settings, dicom_destination=f"dicomweb+{orthanc.dicomweb}")
    app = create_app(settings=stow, predictor=predictor)
    services, sender = app.extensions["covidxray"], app.extensions["covidxray.dicom"]
    source = cr_dataset()
    try:
        receive(services, sender, to_bytes(source), subject="ae:TEST", source="dicom")
        wait_for(lambda: sender.pending() == 0, timeout=120)
    finally:
        sender.stop(drain_seconds=0)
    found = results_in(orthanc, str(source.StudyInstanceUID))
    assert {k: len(v) for k, v in found.items()} == {SR_CLASS: 1, SC_CLASS: 1}
