"""The three benchmark images, synthesised deterministically so every run measures the same bytes."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class BenchImage:
    """One encoded benchmark image."""

    name: str
    data: bytes
    width: int
    height: int
    format: str

    @property
    def filename(self) -> str:
        """A file name with the format's extension."""
        return f"{self.name}.{'png' if self.format == 'png' else 'jpg'}"


def radiograph(width: int, height: int, seed: int = 0) -> Image.Image:
    """A chest-radiograph-like 8-bit grayscale picture: body, lungs, spine, ribs and film grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = (x - width / 2) / (width / 2), (y - height / 2) / (height / 2)
    img = 150 - 60 * (u**2 + 0.3 * v**2)  # soft tissue, darker towards the edges
    for side in (-1, 1):  # lungs: two dark ellipses
        lung = ((u - 0.42 * side) / 0.3) ** 2 + ((v + 0.05) / 0.62) ** 2
        img -= 80 * np.clip(1 - lung, 0, 1) ** 0.5
    img += 70 * np.exp(-((u / 0.07) ** 2))  # spine
    ribs = np.sin(v * 22 + 3 * u**2) * np.exp(-((np.abs(u) - 0.4) ** 2) / 0.08)
    img += 18 * ribs
    img += rng.normal(0, 5, img.shape)  # film grain
    picture = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L")
    return picture.filter(ImageFilter.GaussianBlur(max(width, height) / 1500))


def _encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


@functools.cache
def bench_images() -> tuple[BenchImage, ...]:
    """The 1024² 8-bit grayscale PNG, the 2500×2000 JPEG and the 224 px JPEG, in that order."""
    big = radiograph(2500, 2000, seed=1)
    return (
        BenchImage("png-1024", _encode(radiograph(1024, 1024, seed=0), "PNG"), 1024, 1024, "png"),
        BenchImage("jpeg-2500x2000", _encode(big, "JPEG", quality=90), 2500, 2000, "jpeg"),
        BenchImage("jpeg-224", _encode(radiograph(224, 224, seed=2), "JPEG", quality=90), 224, 224, "jpeg"),
    )
