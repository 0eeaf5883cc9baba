"""Class activation maps: exact, class-specific, in the image's aspect ratio, only when asked."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from covidxray import create_app, service
from covidxray.imaging.heatmap import MAX_SIDE, class_activation_map, levels, map_png, overlay_png, stored_map
from covidxray.imaging.prepare import prepare


def test_map_equals_a_direct_computation_from_features_and_weights(predictor, sample_jpeg):
    prepared = prepare(sample_jpeg, predictor.input_size)
    logits, features = predictor.logits(prepared.tensor[None])
    kernel, bias = predictor._runtime.output_weights
    fmap = features[0]
    for index in range(kernel.shape[1]):
        direct = np.zeros(fmap.shape[:2])
        for k in range(fmap.shape[2]):
            direct += kernel[k, index] * fmap[:, :, k]
        cam = class_activation_map(fmap, kernel, index)
        np.testing.assert_allclose(cam, direct, atol=1e-4)
        # global average pooling straight into the output layer: the map's mean is the logit
        assert cam.mean() + bias[index] == pytest.approx(float(logits[0, index]), abs=1e-3)


def test_maps_differ_between_classes(predictor, sample_jpeg):
    prepared = prepare(sample_jpeg, predictor.input_size)
    _, features = predictor.logits(prepared.tensor[None])
    kernel, _ = predictor._runtime.output_weights
    maps = [class_activation_map(features[0], kernel, i) for i in range(kernel.shape[1])]
    assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[1], maps[2])


def test_overlay_keeps_the_image_aspect_ratio():
    image = Image.linear_gradient("L").resize((300, 200))
    png = Image.open(io.BytesIO(overlay_png(image, np.random.default_rng(0).random((7, 7)), (900, 600))))
    assert png.size == (768, 512) and png.mode == "RGB"


def test_explain_returns_a_heatmap_url_served_as_png(client, auth, sample_jpeg):
    body = client.post(
        "/api/v1/predict?explain=1", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "x.jpg")}
    ).get_json()
    assert body["heatmap_url"] == f"/api/v1/predictions/{body['id']}/heatmap.png"
    response = client.get(body["heatmap_url"], headers=auth)
    assert response.status_code == 200 and response.mimetype == "image/png"
    heat = Image.open(io.BytesIO(response.data))
    original = body["image"]["width"] / body["image"]["height"]
    assert heat.width / heat.height == pytest.approx(original, rel=0.01)


def test_prediction_stores_only_the_map_and_the_route_draws_it_over_the_stored_image(
    app, client, auth, sample_jpeg, predictor
):
    body = client.post(
        "/api/v1/predict?explain=1", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "x.jpg")}
    ).get_json()
    services = app.extensions["covidxray"]
    record = services.log.get(body["id"])
    kept = services.images.get(record.heatmap_uri)
    cam = stored_map(kept)
    assert cam is not None and cam.shape == (9, 9) and cam.dtype == np.uint8 and len(kept) < 1000
    prepared = prepare(sample_jpeg, predictor.input_size)
    logits, features = predictor.logits(prepared.tensor[None])
    kernel, _ = predictor._runtime.output_weights
    exact = class_activation_map(features[0], kernel, int(np.argmax(logits[0])))
    np.testing.assert_array_equal(cam, levels(exact))  # the predicted class's map, all 256 levels kept
    drawn = client.get(body["heatmap_url"], headers=auth).data
    assert drawn == overlay_png(prepared.image, cam, (prepared.width, prepared.height))


def test_an_overlay_drawn_by_an_earlier_release_is_served_as_stored(app, client, auth, sample_jpeg):
    body = client.post(
        "/api/v1/predict?explain=1", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "x.jpg")}
    ).get_json()
    services = app.extensions["covidxray"]
    record = services.log.get(body["id"])
    old = overlay_png(Image.open(io.BytesIO(sample_jpeg)), np.eye(7), (320, 240))
    record.heatmap_uri = services.images.put(old, "png", content_type="image/png", request_id=record.id).uri
    assert stored_map(old) is None
    assert service.heatmap_png(services, record) == old


def test_a_map_png_is_tiny_and_marked_and_other_pngs_are_not_maps():
    cam = np.random.default_rng(1).normal(size=(9, 9))
    data = map_png(cam)
    np.testing.assert_array_equal(stored_map(data), levels(cam))
    plain = io.BytesIO()
    Image.fromarray(levels(cam), "L").save(plain, "PNG")
    assert stored_map(plain.getvalue()) is None  # the same pixels without the mark are a picture
    assert stored_map(data[: len(data) // 2]) is None and stored_map(b"not an image") is None


def test_the_api_heatmap_may_be_cached_by_its_client(client, auth, sample_jpeg):
    body = client.post(
        "/api/v1/predict?explain=1", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "x.jpg")}
    ).get_json()
    response = client.get(body["heatmap_url"], headers=auth)
    assert response.headers["Cache-Control"] == "private, max-age=3600"


def test_a_heatmap_is_drawn_after_the_pixel_limit_was_lowered_below_its_film(
    settings, predictor, auth, sample_jpeg
):
    before = create_app(settings=settings, predictor=predictor).test_client()
    body = before.post(
        "/api/v1/predict?explain=1", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "x.jpg")}
    ).get_json()
    after = create_app(settings=replace(settings, max_pixels=10_000), predictor=predictor).test_client()
    drawn = after.get(body["heatmap_url"], headers=auth)
    assert drawn.status_code == 200 and drawn.data == before.get(body["heatmap_url"], headers=auth).data
    refused = after.post("/api/v1/predict", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "x.jpg")})
    assert refused.status_code == 400  # new uploads meet the new limit


def test_overlay_is_at_most_max_side_and_draws_the_maps_hot_spot_red():
    cam = np.zeros((9, 9))
    cam[4, 4] = 1.0
    image = Image.new("L", (2000, 1000), 128)
    drawn = np.asarray(Image.open(io.BytesIO(overlay_png(image, cam, (2000, 1000)))))
    assert drawn.shape == (MAX_SIDE // 2, MAX_SIDE, 3)
    red, green, blue = drawn[MAX_SIDE // 4, MAX_SIDE // 2].astype(int)
    assert red > green and red > blue  # the hottest level is red
    red, green, blue = drawn[5, 5].astype(int)
    assert blue > red  # the coldest is blue


def test_no_heatmap_unless_asked(client, auth, sample_jpeg, stored):
    body = client.post(
        "/api/v1/predict", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "x.jpg")}
    ).get_json()
    assert body["heatmap_url"] is None
    assert client.get(f"/api/v1/predictions/{body['id']}/heatmap.png", headers=auth).status_code == 404
    assert stored() == (1, 1)


def test_delete_erases_the_heatmap_too(client, auth, sample_jpeg, stored):
    body = client.post(
        "/api/v1/predict", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "x.jpg"), "explain": "1"}
    ).get_json()
    assert stored() == (2, 1)
    client.delete(f"/api/v1/predictions/{body['id']}", headers=auth)
    assert stored() == (0, 0)


def test_deleting_one_of_two_answers_for_the_same_film_keeps_the_others_heatmap(
    client, auth, sample_jpeg, stored
):
    first, second = (
        client.post(
            "/api/v1/predict?explain=1", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "x.jpg")}
        ).get_json()
        for _ in range(2)
    )
    assert stored() == (2, 2)  # one film and one map, shared by both records
    assert client.delete(f"/api/v1/predictions/{first['id']}", headers=auth).status_code == 204
    assert stored() == (2, 1)
    assert client.get(second["heatmap_url"], headers=auth).status_code == 200


def test_malformed_explain_is_invalid_field(client, auth, sample_jpeg):
    response = client.post(
        "/api/v1/predict?explain=maybe", headers=auth, data={"image": (io.BytesIO(sample_jpeg), "x.jpg")}
    )
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_field"
