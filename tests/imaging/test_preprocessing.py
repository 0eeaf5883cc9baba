"""Tests for `prepare`: every format and mode gives the same tensor."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from covidxray.imaging.prepare import prepare

SIZE = 224
JPEG_TOLERANCE = 0.03  # mean absolute difference JPEG (quality 95) vs PNG, on the [0, 1] scale


def _picture(width: int = 400, height: int = 360) -> np.ndarray:
    """A smooth synthetic 'radiograph' holding both 0 and 255."""
    y, x = np.mgrid[0:height, 0:width]
    img = 128 + 90 * np.sin(x / 37.0) * np.cos(y / 23.0) + 30 * np.sin((x + y) / 11.0)
    img = np.clip(img, 0, 255)
    img[:20, :20], img[-20:, -20:] = 0, 255
    return img.round().astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return _picture()


def _variants(gray: np.ndarray) -> dict[str, bytes]:
    """The same picture in every lossless mode."""
    g = Image.fromarray(gray, mode="L")
    rgba = g.convert("RGBA")
    palette = Image.fromarray(gray, mode="P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)  # full-range 16 bit: min-max maps back exactly
    return {
        "gray png": _encode(g, "PNG"),
        "rgb png": _encode(g.convert("RGB"), "PNG"),
        "rgba png": _encode(rgba, "PNG"),
        "palette png": _encode(palette, "PNG"),
        "16-bit png": _encode(sixteen, "PNG"),
        "la png": _encode(g.convert("LA"), "PNG"),
    }


def test_every_lossless_mode_gives_the_same_tensor(gray: np.ndarray) -> None:
    tensors = {name: prepare(data, SIZE).tensor for name, data in _variants(gray).items()}
    assert Image.open(io.BytesIO(_variants(gray)["16-bit png"])).mode.startswith("I")
    reference = tensors["gray png"]
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(tensor, reference, err_msg=name)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_is_close_to_png(gray: np.ndarray, mode: str) -> None:
    g = Image.fromarray(gray, mode="L").convert(mode)
    png = prepare(_encode(g, "PNG"), SIZE).tensor
    jpeg = prepare(_encode(g, "JPEG", quality=95), SIZE).tensor
    assert float(np.abs(png - jpeg).mean()) < JPEG_TOLERANCE


def test_large_jpeg_uses_draft_mode_and_stays_close_to_png() -> None:
    big = Image.fromarray(_picture(2000, 1800), mode="L")
    png = prepare(_encode(big, "PNG"), SIZE)
    jpeg = prepare(_encode(big, "JPEG", quality=95), SIZE)
    assert png.image.size == (2000, 1800)
    assert min(jpeg.image.size) >= 2 * SIZE and jpeg.image.size[0] < 2000  # decoded at a reduced scale
    assert float(np.abs(png.tensor - jpeg.tensor).mean()) < JPEG_TOLERANCE


@pytest.mark.parametrize("shape", [(64, 64), (100, 300), (333, 97), (1500, 1200)])
@pytest.mark.parametrize("size", [64, 224, 320])
def test_any_size_gives_the_model_shape_in_unit_range(shape: tuple[int, int], size: int) -> None:
    data = _encode(Image.fromarray(_picture(*shape)), "PNG")
    tensor = prepare(data, size).tensor
    assert tensor.shape == (size, size, 1) and tensor.dtype == np.float32
    assert tensor.min() >= 0.0 and tensor.max() <= 1.0


def test_contrast_is_normalised(gray: np.ndarray) -> None:
    dim = (gray.astype(np.float32) * 0.4 + 40).round().astype(np.uint8)
    a = prepare(_encode(Image.fromarray(gray), "PNG"), SIZE).tensor
    b = prepare(_encode(Image.fromarray(dim), "PNG"), SIZE).tensor
    assert float(np.abs(a - b).mean()) < 0.03
