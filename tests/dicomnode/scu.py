"""A storage SCU for the tests: associations to our listener, as a modality or a PACS opens them."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from tests.orthanc import PEER_AE

SCU_AE = "TESTSCU"  # the calling AE of the tests' own associations (allowed)


def associate(
    port: int, contexts: list[tuple[str, str]], calling: str = SCU_AE, called: str = PEER_AE
) -> Association:
    """An association proposing (SOP class, transfer syntax) contexts plus Verification."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120  # a busy CI machine answers slowly
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called)


def store(port: int, datasets: list[Dataset], calling: str = SCU_AE) -> list[Dataset]:
    """C-STORE each dataset over one association; the status datasets."""
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    assoc = associate(port, contexts, calling)
    assert assoc.is_established, "association not established"
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()
