"""Fast pixel decoders behind `prepare`: libspng for PNG, libjpeg-turbo (simplejpeg) for JPEG.

Pillow still opens every file (its header checks, format sniffing and EXIF reading stay the reference);
these functions only replace its pixel decoding, and only for the layouts they give identically:

- PNG: 8-bit grayscale, RGB and RGBA, and 16-bit grayscale, without a palette, a tRNS
  transparency or EXIF (those stay with Pillow);
- JPEG: grayscale and YCbCr/RGB, scaled in the DCT domain to no less than the size asked for, exactly
  as Pillow's draft mode does (CMYK and the rest stay with Pillow).

Each returns a Pillow image in the mode Pillow itself would have loaded, or None where Pillow decodes.
"""

from __future__ import annotations

import struct

import numpy as np
import pyspng
import simplejpeg
from PIL import Image

#: PNG colour type, bit depth -> (libspng output format, Pillow's mode)
_PNG_LAYOUTS: dict[tuple[int, int], tuple[str | None, str]] = {
    (0, 8): ("L", "L"),
    (0, 16): (None, "I;16"),  # libspng's automatic format keeps the 16 bits (as grey + alpha)
    (2, 8): ("RGB", "RGB"),
    (6, 8): ("RGBA", "RGBA"),
}
#: Text chunks that can carry an orientation for Pillow (ImageMagick's EXIF, XMP), besides eXIf.
_EXIF_TEXTS = (b"Raw profile type exif\0", b"XML:com.adobe.xmp\0")
_JPEG_MODES = {"L": "GRAY", "RGB": "RGB"}


def png(data: bytes, img: Image.Image) -> Image.Image | None:
    """Decode the PNG `data` (opened by Pillow as `img`) with libspng, or None to leave it to Pillow."""
    layout = _PNG_LAYOUTS.get((data[25], data[24]))  # IHDR: bit depth at 24, colour type at 25
    if layout is None or "transparency" in img.info or _png_has_exif(data):
        return None
    spng_format, mode = layout
    try:
        pixels = pyspng.load(data, spng_format)
    except RuntimeError as exc:  # libspng's every failure: truncated, corrupt, over its limits
        raise ValueError(str(exc)) from exc
    if mode == "I;16":
        pixels = np.ascontiguousarray(pixels[..., 0] if pixels.ndim == 3 else pixels, dtype="<u2")
    if pixels.shape[:2] != (img.height, img.width):
        raise ValueError("the PNG's pixel data does not match its header")
    return Image.fromarray(pixels)


def _png_has_exif(data: bytes) -> bool:
    """True when a chunk of the PNG `data` may carry EXIF (read from the chunk headers alone)."""
    at = 8
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        if kind == b"eXIf" or (
            kind in (b"tEXt", b"zTXt", b"iTXt") and data[at + 8 : at + 8 + length].startswith(_EXIF_TEXTS)
        ):
            return True
        at += length + 12  # length, type, data, CRC
    return False


def jpeg(data: bytes, img: Image.Image, least: int) -> Image.Image | None:
    """Decode the JPEG `data` (opened by Pillow as `img`) with libjpeg-turbo, or None for Pillow.

    It is scaled down in the DCT domain by the power of two that Pillow's `draft(mode, (least, least))`
    picks (the largest of 1/8, 1/4, 1/2 and 1 that keeps both sides at least `least` px).
    """
    colorspace = _JPEG_MODES.get(img.mode)
    if colorspace is None:
        return None
    scale = min(img.width // least, img.height // least)
    step = next((s for s in (8, 4, 2) if scale >= s), 1)
    pixels = simplejpeg.decode_jpeg(
        data,
        colorspace=colorspace,
        min_width=-(-img.width // step),  # libjpeg's own sizes at that scale: ceil(side / step)
        min_height=-(-img.height // step),
        strict=True,
    )
    return Image.fromarray(pixels[..., 0] if colorspace == "GRAY" else pixels)
