"""The fast decoders (libspng, libjpeg-turbo) give what Pillow, the reference, gives, and take nothing
that Pillow refuses.

Tolerance: PNG is lossless, so the fast path's tensor must equal Pillow's exactly. JPEG goes through
libjpeg-turbo on both paths (Pillow's and simplejpeg's builds), with the same IDCT, upsampling and DCT
scale; we allow one grey level (1/255 on the tensor's scale) for a build that rounds differently, and
measure 0 today.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from covidxray.errors import InvalidImage
from covidxray.imaging import fastdecode
from covidxray.imaging.prepare import Prepared, prepare

SIZE = 224
JPEG_TOLERANCE = 1 / 255


def _film(width: int = 900, height: int = 700, seed: int = 0) -> np.ndarray:
    """A grainy synthetic film (the grain makes PNG encoders pick every filter, Paeth included)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = 128 + 60 * np.sin(x / 50) * np.cos(y / 70) + rng.normal(0, 6, (height, width))
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def _gray(size: tuple[int, int] = (900, 700)) -> Image.Image:
    return Image.fromarray(_film(*size))


def _colour() -> Image.Image:
    g = _film()
    return Image.fromarray(np.stack([g, 255 - g, np.roll(g, 40, axis=1)], axis=2))


def _translucent() -> Image.Image:
    alpha = np.linspace(0, 255, 900, dtype=np.uint8)[None, :].repeat(700, axis=0)
    return Image.fromarray(np.dstack([_film()] * 3 + [alpha]))


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value  # 6: rotate 90° clockwise to view
    return exif


def _rotated_jpeg() -> bytes:
    return _encode(_gray(), "JPEG", quality=90, exif=_orientation(6))


#: name -> (the upload, whether the fast decoder takes it)
CASES: dict[str, tuple[Callable[[], bytes], bool]] = {
    "8-bit grey png": (lambda: _encode(_gray(), "PNG"), True),
    "16-bit grey png": (lambda: _encode(Image.fromarray(_film().astype(np.uint16) * 211), "PNG"), True),
    "rgb png": (lambda: _encode(_colour(), "PNG"), True),
    "rgba png": (lambda: _encode(_translucent(), "PNG"), True),
    "palette png": (lambda: _encode(_gray().convert("P"), "PNG"), False),
    "grey + alpha png": (lambda: _encode(_gray().convert("LA"), "PNG"), False),
    "grey png with exif": (lambda: _encode(_gray(), "PNG", exif=_orientation(6)), False),
    "grey jpeg": (lambda: _encode(_gray(), "JPEG", quality=90), True),
    "colour jpeg": (lambda: _encode(_colour(), "JPEG", quality=90), True),
    "2700x2100 jpeg (DCT scaling)": (lambda: _encode(_gray((2700, 2100)), "JPEG"), True),
    "1300x1000 jpeg (scale 1/2, not 3/8)": (lambda: _encode(_gray((1300, 1000)), "JPEG"), True),
    "jpeg with exif orientation": (_rotated_jpeg, True),
    "cmyk jpeg": (lambda: _encode(_colour().convert("CMYK"), "JPEG"), False),
}


@pytest.fixture
def pillow_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], Prepared]:
    """`prepare` with the fast decoders switched off: Pillow decodes everything, as the reference."""

    def prepared(data: bytes) -> Prepared:
        with monkeypatch.context() as patch:
            patch.setattr(fastdecode, "png", lambda *args: None)
            patch.setattr(fastdecode, "jpeg", lambda *args: None)
            return prepare(data, SIZE)

    return prepared


def _takes(data: bytes) -> bool:
    img = Image.open(io.BytesIO(data))
    fast = fastdecode.png(data, img) if img.format == "PNG" else fastdecode.jpeg(data, img, 2 * SIZE)
    return fast is not None


@pytest.mark.parametrize("name", CASES)
def test_fast_path_gives_pillows_tensor(name: str, pillow_only: Callable[[bytes], Prepared]) -> None:
    build, fast = CASES[name]
    data = build()
    assert _takes(data) is fast
    ours, reference = prepare(data, SIZE), pillow_only(data)
    tolerance = JPEG_TOLERANCE if "jpeg" in name else 0.0
    np.testing.assert_allclose(ours.tensor, reference.tensor, rtol=0, atol=tolerance + 1e-7)
    assert (ours.width, ours.height, ours.format) == (reference.width, reference.height, reference.format)
    assert ours.image.size == reference.image.size  # the same DCT scale, the same rotation
    assert ours.warnings == reference.warnings  # the colour-photograph note included


def test_colour_pictures_are_still_noted_as_photographs() -> None:
    for data in (_encode(_colour(), "PNG"), _encode(_colour(), "JPEG")):
        assert any("colour photograph" in note for note in prepare(data, SIZE).warnings)


def test_exif_orientation_is_applied_on_the_fast_path() -> None:
    prepared = prepare(_rotated_jpeg(), SIZE)
    assert (prepared.width, prepared.height) == (700, 900)


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("8-bit grey png", lambda d: d[: len(d) // 2]),
        ("8-bit grey png", lambda d: d[:40] + bytes(len(d) - 40)),
        ("16-bit grey png", lambda d: d[: len(d) * 3 // 4]),
        ("grey jpeg", lambda d: d[: len(d) // 2]),
        ("colour jpeg", lambda d: d[:600] + bytes(2000) + d[2600:]),
        ("2700x2100 jpeg (DCT scaling)", lambda d: d[: len(d) - 5000]),
    ],
)
def test_damaged_files_get_what_pillow_gives_them(
    name: str, damage: Callable[[bytes], bytes], pillow_only: Callable[[bytes], Prepared]
) -> None:
    data = damage(CASES[name][0]())
    try:
        expected = pillow_only(data).tensor
    except InvalidImage:
        with pytest.raises(InvalidImage, match="truncated or corrupt"):
            prepare(data, SIZE)
    else:
        np.testing.assert_allclose(prepare(data, SIZE).tensor, expected, rtol=0, atol=JPEG_TOLERANCE + 1e-7)


def test_a_file_the_fast_decoder_refuses_falls_back_to_pillow(
    pillow_only: Callable[[bytes], Prepared],
) -> None:
    data = CASES["8-bit grey png"][0]()[:-20]  # no IEND, and the last IDAT chunk cut before its CRC
    with pytest.raises(ValueError):
        fastdecode.png(data, Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(prepare(data, SIZE).tensor, pillow_only(data).tensor)


def test_oversized_and_bomb_headers_are_refused_before_any_pixel_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(*args: object) -> None:
        raise AssertionError("a fast decoder ran on a file its header should have stopped")

    monkeypatch.setattr(fastdecode, "png", never)
    monkeypatch.setattr(fastdecode, "jpeg", never)
    wide = _encode(Image.new("L", (8000, 7000)), "PNG")
    with pytest.raises(InvalidImage, match="too many pixels|at most"):
        prepare(wide, SIZE, max_pixels=50_000_000)
    huge_jpeg = _encode(Image.new("L", (9000, 9000)), "JPEG")
    with pytest.raises(InvalidImage, match="too many pixels|at most"):
        prepare(huge_jpeg, SIZE)
