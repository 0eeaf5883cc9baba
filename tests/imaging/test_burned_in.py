"""Burnt-in text: found by Tesseract, blacked out of the stored copy (never of what the model sees),
or refused; clean films stay off the slow path."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont

from covidxray import create_app
from covidxray.imaging import heatmap
from covidxray.imaging.burned_in import suspect_bands
from covidxray.imaging.prepare import prepare
from tests.dicomnode.films import SAMPLES, cr_dataset, to_bytes

pytestmark = pytest.mark.skipif(
    shutil.which("tesseract") is None,
    reason="Debian's tesseract-ocr is not installed (make test-deps installs it)",
)
WORDS = ("JANE", "1970-01-01", "MRN", "4711")


def film_with_text(size: int = 768) -> np.ndarray:
    """A sample radiograph with a name, a birth date and a record number drawn into its top-left corner."""
    image = Image.open(sorted(SAMPLES.glob("*.jpg"))[1]).convert("L").resize((size, size * 4 // 5))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=size // 28)
    draw.text((size // 40, size // 50), "DOE JANE 1970-01-01", fill=255, font=font)
    draw.text((size // 40, size // 50 + size // 22), "MRN 4711", fill=255, font=font)
    return np.asarray(image)


def read_words(pixels: np.ndarray) -> str:
    """What Tesseract reads in the upper third of an 8-bit image (where the text was drawn), upper-cased:
    as it is, and its bright strokes alone."""
    import pytesseract

    pixels = pixels[: pixels.shape[0] // 3]
    grey = Image.fromarray(pixels.astype(np.uint8))
    bright = Image.fromarray(np.where(pixels >= 200, 0, 255).astype(np.uint8))
    pages = [grey, bright, bright.resize((bright.width * 2, bright.height * 2))]
    return " ".join(pytesseract.image_to_string(page, config="--psm 11") for page in pages).upper()


def stored_dicom(tmp_path: Path) -> pydicom.Dataset:
    [path] = (tmp_path / "uploads").rglob("*.dcm")
    return pydicom.dcmread(path)


def post_dicom(client, auth, data: bytes):
    return client.post("/api/v1/predict", data=data, headers={**auth, "Content-Type": "application/dicom"})


def test_stored_copy_of_a_dicom_with_burnt_in_text_holds_none_of_the_words(client, auth, tmp_path) -> None:
    pixels = film_with_text()
    assert sum(word in read_words(pixels) for word in WORDS) >= 3  # the reader reads the original
    answer = post_dicom(client, auth, to_bytes(cr_dataset(pixels.astype(np.uint16) * 16)))
    assert answer.status_code == 200
    assert any("burnt-in text" in w for w in answer.get_json()["warnings"])
    stored = stored_dicom(tmp_path)
    text = read_words((stored.pixel_array // 16).astype(np.uint8))
    assert not [word for word in WORDS if word in text], text
    assert stored.BurnedInAnnotation == "NO"
    assert "113101" in [item.CodeValue for item in stored.DeidentificationMethodCodeSequence]


def test_the_model_sees_the_original_pixels(client, auth, settings, predictor) -> None:
    data = to_bytes(cr_dataset(film_with_text().astype(np.uint16) * 16))
    redacted = post_dicom(client, auth, data).get_json()
    keep = create_app(settings=replace(settings, burned_in="keep"), predictor=predictor).test_client()
    kept = post_dicom(keep, auth, data).get_json()
    assert redacted["probabilities"] == kept["probabilities"]
    assert not any("burnt-in" in w for w in kept["warnings"])


def test_refuse_answers_422_and_stores_nothing(settings, predictor, auth, stored) -> None:
    client = create_app(settings=replace(settings, burned_in="refuse"), predictor=predictor).test_client()
    answer = post_dicom(client, auth, to_bytes(cr_dataset(film_with_text().astype(np.uint16) * 16)))
    assert answer.status_code == 422
    assert answer.get_json()["error"]["code"] == "burned_in_text"
    assert stored() == (0, 0)


def test_png_upload_with_text_is_redacted_in_its_own_format(client, auth, tmp_path) -> None:
    out = io.BytesIO()
    Image.fromarray(film_with_text()).save(out, "PNG")
    answer = client.post(
        "/api/v1/predict", data=out.getvalue(), headers={**auth, "Content-Type": "image/png"}
    )
    assert answer.status_code == 200
    [path] = (tmp_path / "uploads").rglob("*.png")
    stored = np.asarray(Image.open(path))
    assert stored.shape == film_with_text().shape
    assert not [word for word in WORDS if word in read_words(stored)]


def test_only_films_with_glyph_lines_in_a_margin_are_read() -> None:
    flagged = {path.name: suspect_bands(Image.open(path)) for path in sorted(SAMPLES.glob("*.jpg"))}
    assert flagged.pop("covid-mhh-2.jpg") == ["top"]  # it has "Bettaufnahme" burnt into its top right
    assert all(bands == [] for bands in flagged.values()), flagged
    assert "top" in suspect_bands(Image.fromarray(film_with_text()))
    small = Image.open(sorted(SAMPLES.glob("*.jpg"))[2]).convert("L").resize((1600, 1280))
    ImageDraw.Draw(small).text((40, 30), "DOE JANE", fill=255, font=ImageFont.load_default(size=32))
    assert "top" in suspect_bands(small)  # a line 1/50 of the width high
    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    assert suspect_bands(Image.fromarray(noise)) == []  # sharp everywhere is not text in a margin


def test_a_dicom_that_declares_burnt_in_text_is_read_even_when_the_screen_sees_none(
    client, auth, tmp_path
) -> None:
    image = Image.open(sorted(SAMPLES.glob("*.jpg"))[2]).convert("L").resize((1600, 1280))
    ImageDraw.Draw(image).text(
        (40, 30), "DOE JANE 1970-01-01", fill=255, font=ImageFont.load_default(size=20)
    )
    assert suspect_bands(image) == []  # a line 1/80 of the width high: below the screen
    pixels = np.asarray(image).astype(np.uint16) * 16
    undeclared = post_dicom(client, auth, to_bytes(cr_dataset(pixels, BurnedInAnnotation="NO"))).get_json()
    assert not any("burnt-in" in w for w in undeclared["warnings"])
    declared = post_dicom(client, auth, to_bytes(cr_dataset(pixels, BurnedInAnnotation="YES"))).get_json()
    assert any("burnt-in" in w for w in declared["warnings"])


def test_the_heatmap_is_drawn_over_the_redacted_copy(client, auth, tmp_path, predictor) -> None:
    out = io.BytesIO()
    Image.fromarray(film_with_text()).save(out, "PNG")
    answer = client.post(
        "/api/v1/predict?explain=1", data=out.getvalue(), headers={**auth, "Content-Type": "image/png"}
    ).get_json()
    drawn = client.get(answer["heatmap_url"], headers=auth).data
    # what was stored: the map (a tiny PNG) and the redacted copy
    kept_map, kept_copy = sorted((tmp_path / "uploads").rglob("*.png"), key=lambda path: path.stat().st_size)
    cam = heatmap.stored_map(kept_map.read_bytes())
    assert cam is not None
    for data, expected in ((kept_copy.read_bytes(), True), (out.getvalue(), False)):
        film = prepare(data, predictor.input_size)
        assert (drawn == heatmap.overlay_png(film.image, cam, (film.width, film.height))) is expected
