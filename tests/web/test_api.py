"""The JSON API: predictions, reads, deletes, errors and health routes."""

from __future__ import annotations

import io
import json
import re

import pytest

from covidxray.labels import LABELS
from covidxray.predictors.runtime import DEFAULT_MODEL
from covidxray.web.auth import issue_token
from tests.helpers import animated_gif, image_bytes


def post_image(client, headers, data: bytes, name: str = "x.jpg", route: str = "/api/v1/predict", **fields):
    return client.post(
        route,
        headers=headers,
        data={"image": (io.BytesIO(data), name), **fields},
        content_type="multipart/form-data",
    )


def test_predict_returns_the_contract_shape(client, auth, sample_jpeg, stored):
    response = post_image(client, auth, sample_jpeg, age="54", sex="female", cough="1", first_name="Ann")
    assert response.status_code == 200
    body = response.get_json()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", body["id"])
    assert body["backend"] == "keras"
    assert body["model"]["name"] == "covidxray-cnn"
    assert list(body["probabilities"]) == list(LABELS)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["predicted_class"] in (*LABELS, "uncertain")
    assert body["image"]["format"] == "jpeg" and body["image"]["uri"].startswith("file://")
    assert body["clinical"] == {"age": 54, "sex": "female", "cough": 1}
    assert "first_name" not in response.get_data(as_text=True)
    assert stored() == (1, 1)


def test_original_route_and_header_are_accepted(client, token, sample_jpeg):
    response = post_image(
        client, {"x-access-token": token}, sample_jpeg, route="/api/prediction", name="p.jpg"
    )
    assert response.status_code == 200


def test_legacy_payload_field_is_accepted(client, auth, sample_jpeg):
    response = client.post(
        "/api/v1/predict", headers=auth, data={"payload": (io.BytesIO(sample_jpeg), "a.jpg")}
    )
    assert response.status_code == 200


def test_raw_body_with_clinical_query_parameters(client, auth, sample_png):
    response = client.post(
        "/api/v1/predict?age=40&fever=1", headers={**auth, "Content-Type": "image/png"}, data=sample_png
    )
    assert response.status_code == 200
    assert response.get_json()["clinical"] == {"age": 40, "fever": 1}
    assert response.get_json()["image"]["format"] == "png"


def test_same_image_as_png_and_jpeg_agree(client, auth, sample_jpeg, sample_png):
    jpeg = post_image(client, auth, sample_jpeg).get_json()["probabilities"]
    png = post_image(client, auth, sample_png, name="x.png").get_json()["probabilities"]
    for label in LABELS:
        assert png[label] == pytest.approx(jpeg[label], abs=0.02)


def test_batch_answers_each_image_in_order(client, auth, sample_jpeg, stored):
    files = [(io.BytesIO(sample_jpeg), "a.jpg"), (io.BytesIO(b"not an image"), "b.png")]
    response = client.post("/api/v1/predict", headers=auth, data={"image": files})
    results = response.get_json()["results"]
    assert response.status_code == 200
    assert results[0]["probabilities"] and results[1]["error"]["code"] == "unsupported_type"
    assert stored() == (1, 1)


BAD_INPUTS = [
    ("empty body", {}, None, 400, "missing_image"),
    ("form without a file", {"data": {"age": "3"}}, "multipart/form-data", 400, "missing_image"),
    ("zero-byte file", {"data": {"image": (io.BytesIO(b""), "x.png")}}, None, 400, "invalid_image"),
    ("text named .png", {"data": {"image": (io.BytesIO(b"hello"), "x.png")}}, None, 415, "unsupported_type"),
    (
        "truncated PNG",
        {"data": {"image": (io.BytesIO(image_bytes((300, 300))[:400]), "x.png")}},
        None,
        400,
        "invalid_image",
    ),
    (
        "1x1 image",
        {"data": {"image": (io.BytesIO(image_bytes((1, 1))), "x.png")}},
        None,
        400,
        "invalid_image",
    ),
    (
        "4000x3 image",
        {"data": {"image": (io.BytesIO(image_bytes((4000, 3))), "x.png")}},
        None,
        400,
        "invalid_image",
    ),
    (
        "animated GIF",
        {"data": {"image": (io.BytesIO(animated_gif()), "x.gif")}},
        None,
        415,
        "unsupported_type",
    ),
    ("PDF", {"data": {"image": (io.BytesIO(b"%PDF-1.4\n%..."), "x.pdf")}}, None, 415, "unsupported_type"),
    ("JSON body", {"data": '{"image": "abc"}'}, "application/json", 415, "unsupported_type"),
    (
        "age out of range",
        {"data": {"image": (io.BytesIO(image_bytes((256, 256))), "x.png"), "age": "200"}},
        None,
        400,
        "invalid_field",
    ),
    (
        "flag not 0/1",
        {"data": {"image": (io.BytesIO(image_bytes((256, 256))), "x.png"), "fever": "maybe"}},
        None,
        400,
        "invalid_field",
    ),
    (
        "sex unknown",
        {"data": {"image": (io.BytesIO(image_bytes((256, 256))), "x.png"), "sex": "x"}},
        None,
        400,
        "invalid_field",
    ),
    (
        "image and payload both",
        {
            "data": {
                "image": (io.BytesIO(image_bytes((256, 256))), "a.png"),
                "payload": (io.BytesIO(image_bytes((256, 256))), "b.png"),
            }
        },
        None,
        400,
        "invalid_field",
    ),
]


@pytest.mark.parametrize(
    ("case", "kwargs", "content_type", "status", "code"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_its_4xx_and_stores_nothing(
    client, auth, stored, case, kwargs, content_type, status, code
):
    extra = {"content_type": content_type} if content_type else {}
    response = client.post("/api/v1/predict", headers=auth, **kwargs, **extra)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == code
    assert response.get_json()["error"]["message"]
    assert stored() == (0, 0)


def test_body_over_the_limit_is_413(settings, predictor, stored):
    from dataclasses import replace

    from covidxray import create_app

    small = create_app(settings=replace(settings, max_upload_mb=1), predictor=predictor)
    headers = {"Authorization": f"Bearer {issue_token(small.extensions['covidxray'].settings, 'a')}"}
    response = small.test_client().post(
        "/api/v1/predict",
        headers=headers,
        data={"image": (io.BytesIO(b"\x89PNG" + b"0" * 2_000_000), "x.png")},
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "too_large"
    assert stored() == (0, 0)


def test_too_many_images_is_400(client, auth, sample_jpeg):
    files = [(io.BytesIO(sample_jpeg), f"{i}.jpg") for i in range(17)]
    response = client.post("/api/v1/predict", headers=auth, data={"image": files})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "too_many_images"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic YTpi"}]
)
def test_predict_without_a_valid_token_is_401(client, sample_jpeg, headers):
    response = post_image(client, headers, sample_jpeg)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.get_json() == {
        "error": {"code": "unauthorized", "message": "a valid bearer token is required"}
    }


def test_token_in_the_query_string_is_ignored(client, token, sample_jpeg):
    response = post_image(client, {}, sample_jpeg, route=f"/api/v1/predict?token={token}")
    assert response.status_code == 401


def test_read_only_token_cannot_predict(client, settings, sample_jpeg):
    headers = {"Authorization": f"Bearer {issue_token(settings, 'bob', scopes=['read'])}"}
    response = post_image(client, headers, sample_jpeg)
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"


def test_prediction_is_readable_by_its_subject_only(client, auth, settings, sample_jpeg):
    created = post_image(client, auth, sample_jpeg).get_json()
    mine = client.get(f"/api/v1/predictions/{created['id']}", headers=auth)
    assert mine.status_code == 200 and mine.get_json()["probabilities"] == created["probabilities"]
    other = {"Authorization": f"Bearer {issue_token(settings, 'mallory')}"}
    assert client.get(f"/api/v1/predictions/{created['id']}", headers=other).status_code == 404
    admin = {"Authorization": f"Bearer {issue_token(settings, 'root', scopes=['admin'])}"}
    assert client.get(f"/api/v1/predictions/{created['id']}", headers=admin).status_code == 200


def test_delete_erases_the_image_and_the_record(client, auth, sample_jpeg, stored):
    created = post_image(client, auth, sample_jpeg).get_json()
    assert stored() == (1, 1)
    assert client.delete(f"/api/v1/predictions/{created['id']}", headers=auth).status_code == 204
    assert stored() == (0, 0)
    assert client.get(f"/api/v1/predictions/{created['id']}", headers=auth).status_code == 404


def test_delete_keeps_an_image_another_record_still_uses(client, auth, sample_jpeg, stored):
    first = post_image(client, auth, sample_jpeg).get_json()
    post_image(client, auth, sample_jpeg)
    client.delete(f"/api/v1/predictions/{first['id']}", headers=auth)
    assert stored() == (1, 1)


def test_unknown_route_and_wrong_method_answer_json(client, auth):
    assert client.get("/api/v1/nothing").get_json()["error"]["code"] == "not_found"
    response = client.get("/api/v1/predict", headers=auth)
    assert response.status_code == 405 and response.get_json()["error"]["code"] == "method_not_allowed"


def test_health_and_readiness(client):
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["ready"] is True
    served = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["serve"]
    assert ready.get_json()["runtime"] == {"onnx-float": "onnx", "onnx-int8": "onnx-int8"}[served]


def test_metrics_count_requests_and_predictions(client, auth, sample_jpeg):
    post_image(client, auth, sample_jpeg)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'covidxray_http_requests_total{method="POST",route="/api/v1/predict",status="200"}' in text
    assert "covidxray_predictions_total" in text
    assert "covidxray_http_request_duration_seconds_bucket" in text


def test_openapi_document_and_docs_page(client):
    document = client.get("/api/openapi.json").get_json()
    assert document["openapi"].startswith("3.") and "/api/v1/predict" in document["paths"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.data.lower()
    assert b"https://" not in docs.data.replace(b"https://github.com", b"")


@pytest.mark.parametrize(
    ("data", "warning"),
    [
        (image_bytes((600, 200)), "unusual aspect ratio (600×200)"),
        (image_bytes((300, 300), "JPEG", "RGB"), None),
    ],
    ids=["panorama", "gray picture saved as RGB"],
)
def test_plausibility_warnings(client, auth, data, warning):
    body = post_image(client, auth, data, name="x.png").get_json()
    assert (warning in " ".join(body["warnings"])) if warning else body["warnings"] == []


def test_colour_photograph_gets_a_warning(client, auth):
    from PIL import Image

    photo = Image.merge(
        "RGB", [Image.linear_gradient("L").resize((256, 256)).rotate(angle) for angle in (0, 90, 180)]
    )
    out = io.BytesIO()
    photo.save(out, "PNG")
    body = post_image(client, auth, out.getvalue(), name="photo.png").get_json()
    assert "looks like a colour photograph, not a radiograph" in body["warnings"]
