"""The C-STORE listener against real associations: what it accepts, refuses and answers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForProcessing,
    MRImageStorage,
)

from covidxray.backends.requestlog import SqliteRequestLog
from tests.dicomnode.conftest import Node
from tests.dicomnode.films import CR, cr_dataset, sample_pixels
from tests.dicomnode.scu import associate, store

pytestmark = pytest.mark.pacs

MPEG2 = "1.2.840.10008.1.2.4.100"  # a transfer syntax we accept at negotiation but cannot decode


def test_echo_is_answered(node: Node) -> None:
    assoc = associate(node.port, [])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_ct_mr_sr_and_for_processing_are_refused_at_negotiation(node: Node) -> None:
    refused = [CTImageStorage, MRImageStorage, ComprehensiveSRStorage, DigitalXRayImageStorageForProcessing]
    assoc = associate(node.port, [(uid, ExplicitVRLittleEndian) for uid in refused])
    assert assoc.is_established  # Verification is accepted
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    assert accepted == {"1.2.840.10008.1.1"}
    assert {str(cx.abstract_syntax) for cx in assoc.rejected_contexts} == set(refused)
    assoc.release()


def test_calling_ae_outside_the_allow_list_is_rejected(node: Node) -> None:
    assoc = associate(node.port, [(CR, ExplicitVRLittleEndian)], calling="INTRUDER")
    assert assoc.is_rejected
    assert not assoc.is_established


def _truncated() -> Dataset:
    ds = cr_dataset()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    return ds


def _without_pixels() -> Dataset:
    ds = cr_dataset()
    del ds.PixelData
    return ds


def _undecodable_syntax() -> Dataset:
    ds = cr_dataset()
    ds.file_meta.TransferSyntaxUID = MPEG2
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(4000)])
    ds["PixelData"].VR = "OB"
    return ds


def _ct_modality_in_a_cr() -> Dataset:
    return cr_dataset(Modality="CT")


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (_truncated, 0xC000),
        (_without_pixels, 0xA900),
        (_undecodable_syntax, 0xC000),
        (_ct_modality_in_a_cr, 0xA900),
    ],
    ids=["truncated-pixel-data", "no-pixel-data", "undecodable-transfer-syntax", "ct-in-a-cr"],
)
def test_bad_instance_answers_a_failure_status_and_stores_nothing(
    node: Node, stored: Callable[[], tuple[int, int]], make: Callable[[], Dataset], status: int
) -> None:
    [answer] = store(node.port, [make()])
    assert answer.Status == status
    assert answer.ErrorComment  # says why
    assert stored() == (0, 0)
    assert node.sender.pending() == 0
    good = store(node.port, [cr_dataset()])  # the listener keeps serving
    assert [s.Status for s in good] == [0x0000]


def test_each_instance_goes_through_the_use_case_as_dicom(node: Node, tmp_path) -> None:
    [answer] = store(node.port, [cr_dataset(sample_pixels(128))])
    assert answer.Status == 0x0000
    log = SqliteRequestLog(tmp_path / "requests.sqlite3")
    [row] = log._conn().execute("SELECT id, source, subject, modality FROM predictions").fetchall()
    assert (row["source"], row["subject"], row["modality"]) == ("dicom", "ae:TESTSCU", "CR")
    record = log.get(row["id"])
    assert record is not None and record.source == "dicom" and record.probabilities
    stored_copy = (tmp_path / "uploads").rglob("*.dcm")
    assert all(b"DOE^JANE" not in p.read_bytes() and b"MRN-4711" not in p.read_bytes() for p in stored_copy)


def test_implicit_vr_is_accepted(node: Node) -> None:
    ds = cr_dataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert [s.Status for s in store(node.port, [ds])] == [0x0000]
