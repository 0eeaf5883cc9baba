"""Text burnt into the pixels (PS3.15 "clean pixel data"): found with Tesseract, blacked out in the
stored copy only (the model sees the original pixels).

Kept off the hot path: a screen of a few ms finds the margin bands (the outer fifth of each side)
whose 512 px thumbnail holds a window dense with glyph-like sharp edges (a line of text at least
about 1/50 of the width high, often less); Tesseract reads only those, or all four bands of a DICOM that
declares `BurnedInAnnotation = YES`. Each band is read twice, binarised for light-on-dark and for
dark-on-light text. A word found blacks out its whole text line (the run of same-polarity pixels
around it), so that a word Tesseract half-read on that line goes too. What it misses: text
inside the image (away from the margins), text of mid-grey on mid-grey, handwriting, and text
too small for Tesseract (below about 8 px high).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

BAND = 0.2  # the outer share of each side that is read
SCREEN = 512  # the screen's thumbnail, long side
WINDOW = (12, 40)  # a thumbnail window about one line of glyphs high (rows, columns)
BLOCK = (4, 8)  # windows are placed on this grid (rows, columns), which WINDOW divides
EDGE = 60  # a "sharp" step between neighbouring thumbnail pixels (0-255)
GLYPHS = 0.33  # the share of sharp pixels in a window that looks like a line of text
LIGHT, DARK = 235, 20  # what counts as burnt-in white and black
MIN_CONFIDENCE = 55
TARGET = 300  # a band's short side is read at about this many pixels


@dataclass
class Finding:
    """Boxes (left, top, right, bottom) in the image's pixels that hold burnt-in text."""

    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    words: int = 0


def bands(width: int, height: int) -> dict[str, tuple[int, int, int, int]]:
    """The four margin bands of an image: name -> (left, top, right, bottom)."""
    bw, bh = max(1, round(width * BAND)), max(1, round(height * BAND))
    return {
        "top": (0, 0, width, bh),
        "bottom": (0, height - bh, width, height),
        "left": (0, 0, bw, height),
        "right": (width - bw, 0, width, height),
    }


def suspect_bands(image: Image.Image) -> list[str]:
    """The bands where a small window of a 512 px thumbnail is dense with sharp edges, as a line of
    glyphs is, while the centre is not (noise is sharp everywhere); a few ms."""
    grey = image if image.mode == "L" else image.convert("L")
    grey = grey.reduce(max(1, max(grey.size) // SCREEN))  # a box filter first: cheap for large films
    if max(grey.size) != SCREEN:  # small ones are enlarged, so that a window means the same everywhere
        scale = SCREEN / max(grey.size)
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))))
    a = np.asarray(grey, dtype=np.int16)
    strong = np.zeros(a.shape, dtype=np.int16)
    strong[:, :-1] = np.abs(np.diff(a, axis=1))
    strong[:-1, :] += np.abs(np.diff(a, axis=0))
    density = _window_density(strong > EDGE, WINDOW)
    h, w = density.shape
    if not h or not w or float(density[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].max()) >= GLYPHS:
        return []  # tiny, or glyph-dense in the middle too: noise or a photograph, not burnt-in text
    found = []
    for name, (left, top, right, bottom) in bands(a.shape[1] // BLOCK[1], a.shape[0] // BLOCK[0]).items():
        region = density[top : min(h, bottom), left : min(w, right)]
        if region.size and float(region.max()) >= GLYPHS:
            found.append(name)
    return found


def _window_density(strong: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """The share of sharp pixels in `window`-sized boxes on a grid of BLOCK steps (top-left anchored):
    block sums by a reshape, then running sums over the small grid of blocks."""
    (bh, bw), (wh, ww) = BLOCK, (window[0] // BLOCK[0], window[1] // BLOCK[1])
    h, w = strong.shape[0] // bh * bh, strong.shape[1] // bw * bw
    if h < bh * wh or w < bw * ww:
        return np.zeros((0, 0), dtype=np.float32)
    blocks = strong[:h, :w].reshape(h // bh, bh, w // bw, bw).sum(axis=(1, 3), dtype=np.int32)
    rows = np.cumsum(blocks, axis=0)
    rows = np.concatenate([rows[wh - 1 : wh], rows[wh:] - rows[:-wh]])  # sums over wh block rows
    cols = np.cumsum(rows, axis=1)
    boxes = np.concatenate([cols[:, ww - 1 : ww], cols[:, ww:] - cols[:, :-ww]], axis=1)
    return boxes.astype(np.float32) / (wh * bh * ww * bw)  # type: ignore[no-any-return]


def find_text(image: Image.Image, names: list[str]) -> Finding:
    """Read the named bands with Tesseract; the boxes of the text lines found."""
    grey = np.asarray(image.convert("L"))
    finding = Finding()
    for name in names:
        left, top, right, bottom = bands(grey.shape[1], grey.shape[0])[name]
        crop = grey[top:bottom, left:right]
        for mask in (crop >= LIGHT, crop <= DARK):
            if mask.mean() < 0.0005:
                continue
            for box in _read(mask):
                finding.words += 1
                x0, y0, x1, y1 = _line(mask, box)
                finding.boxes.append((x0 + left, y0 + top, x1 + left, y1 + top))
    return finding


def _read(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Word boxes (in `mask` pixels) Tesseract reads in black glyphs on white."""
    import pytesseract

    height, width = mask.shape
    scale = min(4.0, max(1.0, TARGET / min(height, width)), 2000 / max(height, width))
    page = Image.fromarray(np.where(mask, 0, 255).astype(np.uint8))
    page = page.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
    )
    data = pytesseract.image_to_data(page, output_type=pytesseract.Output.DICT, config="--psm 11")
    boxes = []
    for i, text in enumerate(data["text"]):
        if sum(ch.isalnum() for ch in text) >= 2 and float(data["conf"][i]) >= MIN_CONFIDENCE:
            x, y, w, h = (data[k][i] / scale for k in ("left", "top", "width", "height"))
            boxes.append((int(x), int(y), int(np.ceil(x + w)), int(np.ceil(y + h))))
    return boxes


def _line(mask: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The word's box grown to its text line: padded, then along the row while glyphs follow closely."""
    x0, y0, x1, y1 = box
    pad = max(2, (y1 - y0) // 2)
    y0, y1 = max(0, y0 - pad), min(mask.shape[0], y1 + pad)
    columns = np.asarray(mask[y0:y1].any(axis=0))
    gap = 2 * (y1 - y0)
    x0, x1 = _extend(columns, x0, -1, gap), _extend(columns, x1, 1, gap)
    return max(0, x0 - pad), y0, min(mask.shape[1], x1 + pad), y1


def _extend(columns: np.ndarray, x: int, step: int, gap: int) -> int:
    """Move from column `x` in `step` direction while glyph columns come within `gap` of each other."""
    last, x = x, x
    while 0 <= x + step < len(columns) and abs(x + step - last) <= gap:
        x += step
        if columns[x]:
            last = x
    return last


def blacken(
    pixels: np.ndarray, boxes: list[tuple[int, int, int, int]], scale: tuple[float, float], fill: float
) -> np.ndarray:
    """`pixels` (rows, cols[, samples] or frames first) with the boxes, given at `scale`, set to `fill`."""
    out = pixels.copy()
    sx, sy = scale
    rows, cols = (
        (out.shape[-3], out.shape[-2]) if out.ndim == 3 and out.shape[-1] in (3, 4) else out.shape[-2:]
    )
    for left, top, right, bottom in boxes:
        x0, y0 = max(0, int(left * sx)), max(0, int(top * sy))
        x1, y1 = min(cols, int(np.ceil(right * sx))), min(rows, int(np.ceil(bottom * sy)))
        if out.ndim == 3 and out.shape[-1] in (3, 4):
            out[y0:y1, x0:x1, :] = fill
        else:
            out[..., y0:y1, x0:x1] = fill
    return out
