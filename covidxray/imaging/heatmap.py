"""Class activation maps (Zhou et al. 2016) from the last feature maps, drawn over the image."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image, PngImagePlugin

MAX_SIDE = 768
ALPHA = 0.45
#: The PNG text chunk that marks a stored map (drawn over the image when fetched).
MAP_KEY, MAP_KIND = "covidxray", "class-activation-map"


def class_activation_map(features: np.ndarray, kernel: np.ndarray, class_index: int) -> np.ndarray:
    """The exact CAM of one class: Σ_k w[k, class] · F[:, :, k], features (h, w, c), kernel (c, n)."""
    return np.tensordot(
        features.astype(np.float64), kernel[:, class_index].astype(np.float64), axes=([2], [0])
    )


def normalise(cam: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] (a flat map becomes zeros)."""
    low, high = float(cam.min()), float(cam.max())
    return (cam - low) / (high - low) if high > low else np.zeros_like(cam)


def levels(cam: np.ndarray) -> np.ndarray:
    """A map as the 256 levels the overlay draws: normalised, then 8-bit."""
    return (normalise(cam) * 255).astype(np.uint8)


def map_png(cam: np.ndarray) -> bytes:
    """A map as a small 8-bit grey PNG, marked as a map: what is stored, to draw when fetched."""
    marked = PngImagePlugin.PngInfo()
    marked.add_text(MAP_KEY, MAP_KIND)
    out = io.BytesIO()
    Image.fromarray(levels(cam), "L").save(out, "PNG", pnginfo=marked)
    return out.getvalue()


def stored_map(data: bytes) -> np.ndarray | None:
    """The 8-bit map in a stored heatmap, or None for anything else: an overlay already drawn
    (earlier releases), or bytes that are not a readable image (served as they are)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG" or image.info.get(MAP_KEY) != MAP_KIND:
                return None
            return np.asarray(image.convert("L"))
    except (OSError, ValueError):  # UnidentifiedImageError and truncated data are OSErrors
        return None


def overlay_png(image: Image.Image, cam: np.ndarray, size: tuple[int, int]) -> bytes:
    """Draw a map over the grayscale image, at `size` (the image's aspect ratio), as PNG bytes.

    `cam`: 8-bit levels as `levels` gives them, or any other map, normalised here.
    """
    width, height = size
    scale = min(1.0, MAX_SIDE / max(width, height))
    out_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    base = image.convert("L").resize(out_size, Image.Resampling.BILINEAR).convert("RGB")
    heat = Image.fromarray(cam if cam.dtype == np.uint8 else levels(cam), "L")
    heat = heat.resize(out_size, Image.Resampling.BICUBIC)
    colour = Image.merge("RGB", [heat.point(lut) for lut in _LUTS])  # each level's colour, looked up
    out = io.BytesIO()
    # zlib level 1 (Pillow's default 6 is about 5x slower on these grainy overlays), Huffman coding
    # only: faster again and smaller than level 1's default strategy (string matching finds little in
    # film grain)
    Image.blend(base, colour, ALPHA).save(out, "PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY)
    return out.getvalue()


def _colormap(values: np.ndarray) -> np.ndarray:
    """A blue → green → yellow → red ramp for values in [0, 1]; returns (h, w, 3) floats in 0-255."""
    stops = np.array([0.0, 0.35, 0.65, 1.0])
    colours = np.array([[30, 60, 200], [40, 200, 90], [250, 220, 40], [220, 30, 30]], dtype=np.float32)
    return np.stack([np.interp(values, stops, colours[:, channel]) for channel in range(3)], axis=-1)


#: _colormap over the 256 levels of an 8-bit map, as one lookup table per channel, computed once.
_LUTS = [
    channel.round().astype(np.uint8).tolist()
    for channel in _colormap(np.arange(256, dtype=np.float32) / 255.0).T
]
