"""Sniffing, decoding and preprocessing of X-ray images.

`prepare` is the ONE preprocessing function: training, evaluation and serving all
turn bytes into the model's input tensor through it, so they cannot disagree.
"""

from __future__ import annotations

import io
import struct
import warnings as _warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from covidxray.errors import InvalidImage, UnsupportedType
from covidxray.imaging import fastdecode

#: Bumped whenever `prepare` changes what the model sees; stored in the model metadata.
PREPROCESSING_VERSION = "1"
MIN_SIDE = 64
#: The decoder's note on a colour picture (the gate refuses such an upload whatever its score).
PHOTO_NOTE = "looks like a colour photograph, not a radiograph"
MAX_ASPECT = 4.0
PLAUSIBLE_ASPECT = 2.0
DEFAULT_MAX_PIXELS = 50_000_000
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF"}
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
    struct.error,  # and IndexError: Pillow's GIF frame walk on a damaged file
    IndexError,
)
#: EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass
class Prepared:
    """The model input for one image, plus what the service reports about it."""

    tensor: np.ndarray  # float32, (size, size, 1), values in [0, 1]
    image: Image.Image  # 8-bit grayscale, upright, at decoded resolution (drawn under heatmaps)
    width: int  # original width, after EXIF rotation
    height: int
    format: str  # png | jpeg | gif | dicom
    warnings: list[str] = field(default_factory=list)
    stored: bytes | None = None  # what to store instead of the upload (the de-identified DICOM copy)
    dicom: dict[str, Any] = field(default_factory=dict)  # non-identifying DICOM fields


def sniff(data: bytes) -> str:
    """Return the format of `data` from its magic bytes, or raise UnsupportedType."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    raise UnsupportedType()


def prepare(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Prepared:
    """Decode `data` (PNG, JPEG, still GIF or DICOM) and build the model's `size`×`size` input.

    Raises UnsupportedType (415) or InvalidImage (400) for unusable input.
    """
    fmt = sniff(data)
    if fmt == "dicom":
        from covidxray.imaging.dicom import decode_dicom

        decoded = decode_dicom(data, max_pixels=max_pixels)
        _check_geometry(decoded.image.size, max_pixels)
        return Prepared(
            tensor=to_tensor(decoded.image, size),
            image=decoded.image,
            width=decoded.image.width,
            height=decoded.image.height,
            format=fmt,
            warnings=decoded.warnings + plausibility(decoded.image.width, decoded.image.height),
            stored=decoded.deidentified,
            dicom=decoded.fields,
        )
    img, width, height, notes = _decode(data, fmt, size, max_pixels)
    notes += plausibility(width, height)
    return Prepared(
        tensor=to_tensor(img, size), image=img, width=width, height=height, format=fmt, warnings=notes
    )


def plausibility(width: int, height: int) -> list[str]:
    """Heuristic notes on the shape: frontal chest films are roughly square (up to about 3:2)."""
    if max(width, height) / min(width, height) > PLAUSIBLE_ASPECT:
        return [f"unusual aspect ratio ({width}×{height}) for a frontal chest radiograph"]
    return []


def to_tensor(img: Image.Image, size: int) -> np.ndarray:
    """Resize an 8-bit grayscale image to `size`×`size` and normalise its contrast to [0, 1]."""
    small = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    small = ImageOps.autocontrast(small, cutoff=1)
    return (np.asarray(small, dtype=np.float32) / 255.0)[:, :, None]


def _decode(data: bytes, fmt: str, size: int, max_pixels: int) -> tuple[Image.Image, int, int, list[str]]:
    """Open, check and load the image as upright 8-bit grayscale."""
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
            _check_geometry(img.size, max_pixels)
            if fmt == "gif" and getattr(img, "n_frames", 1) > 1:
                raise UnsupportedType("animated GIFs are not accepted; send a single still image")
            full = img.size  # what is reported, not the reduced size a JPEG draft decodes at
            img, orientation = _load(img, data, fmt, 2 * size)
            loaded = img.size
            if isinstance(orientation, int) and orientation in _UPRIGHT:
                img = img.transpose(_UPRIGHT[orientation])
    except (UnsupportedType, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own cap
        raise InvalidImage(f"the image has too many pixels; at most {max_pixels} are accepted") from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImage("the image is truncated or corrupt and could not be decoded") from exc
    width, height = full if img.size == loaded else full[::-1]  # an EXIF rotation by 90° swaps them
    if img.mode in ("RGB", "RGBA", "CMYK", "P", "YCbCr") and _looks_like_photo(img):
        notes = [PHOTO_NOTE]
    else:
        notes = []
    return _to_gray8(img), width, height, notes


def _load(img: Image.Image, data: bytes, fmt: str, least: int) -> tuple[Image.Image, object]:
    """Decode the pixels of the opened `img` and return them with the EXIF orientation: through the fast
    decoders where they apply, else (and for any file they fail on: Pillow, the reference, decides what a
    damaged file gets) through Pillow. A JPEG is decoded at a reduced scale, never below `least` px."""
    try:
        if fmt == "png" and (fast := fastdecode.png(data, img)) is not None:
            return fast, None  # the fast path takes only PNGs without EXIF, so without an orientation
        if fmt == "jpeg" and (fast := fastdecode.jpeg(data, img, least)) is not None:
            return fast, _orientation(img)
    except ValueError:
        pass
    if fmt == "jpeg":
        img.draft(img.mode, (least, least))
    img.load()
    return img, _orientation(img)


def _orientation(img: Image.Image) -> object:
    """The EXIF orientation tag (not ImageOps.exif_transpose: it re-encodes EXIF, which fails on damaged
    tags)."""
    return img.getexif().get(ExifTags.Base.Orientation)


def _check_geometry(size: tuple[int, int], max_pixels: int) -> None:
    """Reject images too small, too elongated or too large before decoding them."""
    w, h = size
    if w < MIN_SIDE or h < MIN_SIDE:
        raise InvalidImage(f"the image is {w}×{h} px; at least {MIN_SIDE} px on each side is needed")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise InvalidImage(f"the image is {w}×{h} px; its aspect ratio is beyond 1:{MAX_ASPECT:g}")
    if w * h > max_pixels:
        raise InvalidImage(f"the image has {w * h} pixels; at most {max_pixels} are accepted")


def _to_gray8(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit grayscale (alpha composited on black, 16 bit min-max scaled)."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB").convert("L") if img.mode == "CMYK" else img.convert("L")


def _looks_like_photo(img: Image.Image) -> bool:
    """True when the colour channels differ clearly, which radiographs never do."""
    thumb = img.convert("RGB")
    thumb.thumbnail((64, 64))
    arr = np.asarray(thumb, dtype=np.int16)
    spread = arr.max(axis=2) - arr.min(axis=2)
    return float(spread.mean()) > 20.0
