"""The browser form and result page through Flask's test client."""

from __future__ import annotations

import io
import re

import pytest


def csrf(client) -> str:
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def submit(client, data: bytes | None, name: str = "x.jpg", **fields):
    form = {"csrf_token": csrf(client), **fields}
    if data is not None:
        form["image"] = (io.BytesIO(data), name)
    return client.post("/", data=form, content_type="multipart/form-data")


def test_form_has_labelled_fields_and_the_notice(client):
    page = client.get("/").get_data(as_text=True)
    for name in ("image", "age", "sex", "symptom_days"):
        assert f'<label for="{name}"' in page and f'id="{name}"' in page
    assert "Not for diagnosis" in page and "csrf_token" in page


def test_upload_redirects_to_a_result_page_with_probabilities(client, sample_jpeg):
    response = submit(client, sample_jpeg, age="61", fever="1")
    assert response.status_code == 303
    page = client.get(response.headers["Location"])
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    for label in ("covid", "pneumonia", "normal"):
        assert f'data-label="{label}"' in text
    assert "covidxray-cnn" in text and "Not for diagnosis" in text
    request_id = response.headers["Location"].rsplit("/", 1)[1]
    assert request_id in text
    image = client.get(f"/results/{request_id}/image")
    assert image.status_code == 200 and image.mimetype == "image/jpeg"


def test_result_page_is_only_for_the_submitting_session(app, client, sample_jpeg):
    location = submit(client, sample_jpeg).headers["Location"]
    stranger = app.test_client()
    assert stranger.get(location).status_code == 404
    assert stranger.get(location + "/image").status_code == 404


def test_missing_csrf_token_is_refused_and_stores_nothing(client, sample_jpeg, stored):
    response = client.post("/", data={"image": (io.BytesIO(sample_jpeg), "x.jpg")})
    assert response.status_code == 400
    assert "form expired" in response.get_data(as_text=True)
    assert stored() == (0, 0)


@pytest.mark.parametrize(
    ("data", "fields", "status", "message"),
    [
        (None, {}, 400, "Choose an X-ray image to upload."),
        (b"just some text", {}, 415, "only PNG, JPEG, DICOM and still GIF images are accepted"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", {}, 400, "truncated or corrupt"),
        ("sample", {"age": "300"}, 400, "must be a whole number from 0 to 120"),
        ("sample", {"sex": "robot"}, 400, "must be female, male or other"),
    ],
    ids=["no file", "text file", "broken PNG", "age out of range", "unknown sex"],
)
def test_bad_form_input_shows_a_message_and_stores_nothing(
    client, sample_jpeg, stored, data, fields, status, message
):
    response = submit(client, sample_jpeg if data == "sample" else data, **fields)
    assert response.status_code == status
    text = response.get_data(as_text=True)
    assert message in text and 'role="alert"' in text
    assert stored() == (0, 0)


def test_form_keeps_the_values_entered_when_a_field_is_wrong(client, sample_jpeg):
    text = submit(client, sample_jpeg, age="300", symptom_days="4").get_data(as_text=True)
    assert 'value="4"' in text and 'aria-invalid="true"' in text


def test_browser_error_pages_are_html(client):
    response = client.get("/results/nope", headers={"Accept": "text/html"})
    assert response.status_code == 404 and response.mimetype == "text/html"
