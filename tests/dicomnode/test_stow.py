"""STOW-RS: PS3.18 multipart/related in, the PS3.18 JSON response out, through the use case."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from covidxray.backends.requestlog import SqliteRequestLog
from tests.dicomnode.films import cr_dataset, to_bytes
from tests.helpers import image_bytes

BOUNDARY = "covidxray-test-boundary"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FAILED, REFERENCED, REASON, INSTANCE = "00081198", "00081199", "00081197", "00081155"


def multipart(*parts: tuple[str, bytes]) -> bytes:
    """A multipart/related body of (content type, payload) parts."""
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode() + payload + b"\r\n"
        for kind, payload in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


def post(client: FlaskClient, body: bytes, auth: dict[str, str], content_type: str = RELATED):
    return client.post("/dicomweb/studies", data=body, headers={**auth, "Content-Type": content_type})


def test_all_stored_answers_200_with_referenced_instances(client: FlaskClient, auth, tmp_path) -> None:
    first, second = cr_dataset(), cr_dataset()
    answer = post(
        client,
        multipart(("application/dicom", to_bytes(first)), ("application/dicom", to_bytes(second))),
        auth,
    )
    assert answer.status_code == 200
    assert answer.mimetype == "application/dicom+json"
    items = answer.get_json()[REFERENCED]["Value"]
    assert [item[INSTANCE]["Value"][0] for item in items] == [first.SOPInstanceUID, second.SOPInstanceUID]
    url = items[0]["00081190"]["Value"][0]
    record = SqliteRequestLog(tmp_path / "requests.sqlite3").get(url.rsplit("/", 1)[1])
    assert (
        record is not None and record.source == "stow" and record.dicom["study_uid"] == first.StudyInstanceUID
    )
    assert FAILED not in answer.get_json()


def test_some_failed_answers_202_with_the_failure_reason(client: FlaskClient, auth, stored) -> None:
    bad = cr_dataset(Modality="CT")
    body = multipart(("application/dicom", to_bytes(cr_dataset())), ("application/dicom", to_bytes(bad)))
    answer = post(client, body, auth)
    assert answer.status_code == 202
    [failed] = answer.get_json()[FAILED]["Value"]
    assert failed[INSTANCE]["Value"] == [bad.SOPInstanceUID] and failed[REASON]["Value"] == [0xA900]
    assert stored()[1] == 1  # the good one only


@pytest.mark.parametrize(
    ("part", "reason"),
    [
        (("image/png", image_bytes((96, 96))), 0xC000),  # a part that is not DICOM
        (("application/dicom", b"not a dicom file at all"), 0xC000),  # declared DICOM, is not
        (("application/dicom", to_bytes(cr_dataset(Modality="MR"))), 0xA900),
    ],
    ids=["png-part", "garbage-part", "mr-part"],
)
def test_none_stored_answers_409_and_stores_nothing(
    client: FlaskClient, auth, stored: Callable[[], tuple[int, int]], part: tuple[str, bytes], reason: int
) -> None:
    answer = post(client, multipart(part), auth)
    assert answer.status_code == 409
    assert answer.get_json()[FAILED]["Value"][0][REASON]["Value"] == [reason]
    assert stored() == (0, 0)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "multipart/form-data; boundary=x",
        f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
        'multipart/related; type="application/dicom"',
    ],
    ids=["raw-dicom", "form-data", "json-metadata", "no-boundary"],
)
def test_wrong_media_type_answers_415(client: FlaskClient, auth, stored, content_type: str) -> None:
    answer = post(client, multipart(("application/dicom", to_bytes(cr_dataset()))), auth, content_type)
    assert answer.status_code == 415
    assert answer.get_json()["error"]["code"] == "unsupported_type"
    assert stored() == (0, 0)


def test_without_a_token_answers_401(client: FlaskClient, stored) -> None:
    answer = post(client, multipart(("application/dicom", to_bytes(cr_dataset()))), {})
    assert answer.status_code == 401
    assert answer.get_json()["error"]["code"] == "unauthorized"
    assert stored() == (0, 0)


def test_a_token_without_predict_scope_answers_403(client: FlaskClient, settings) -> None:
    from covidxray.web.auth import issue_token

    token = issue_token(settings, "reader", scopes=("read",))
    answer = post(
        client, multipart(("application/dicom", to_bytes(cr_dataset()))), {"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 403


def test_an_empty_multipart_answers_400(client: FlaskClient, auth) -> None:
    answer = post(client, f"--{BOUNDARY}--\r\n".encode(), auth)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "missing_image"


def test_stow_is_in_the_openapi_document(client: FlaskClient) -> None:
    paths = client.get("/api/openapi.json").get_json()["paths"]
    assert "post" in paths["/dicomweb/studies"]
    assert "get" in paths["/api/v1/predictions/{request_id}/fhir"]


def test_a_part_without_preamble_is_read_as_a_dicom_file(client: FlaskClient, auth) -> None:
    import io

    import pydicom

    out = io.BytesIO()
    pydicom.dcmwrite(out, cr_dataset())  # file meta, but no preamble and no DICM (as some clients send)
    assert out.getvalue()[128:132] != b"DICM"
    assert post(client, multipart(("application/dicom", out.getvalue())), auth).status_code == 200
