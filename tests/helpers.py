"""Small builders of test inputs."""

from __future__ import annotations

import io

from PIL import Image


def image_bytes(size: tuple[int, int], fmt: str = "PNG", mode: str = "L", **save: object) -> bytes:
    """An image of `size` with a gradient, encoded as `fmt`."""
    img = Image.linear_gradient("L").resize(size).convert(mode)
    out = io.BytesIO()
    img.save(out, fmt, **save)
    return out.getvalue()


def animated_gif() -> bytes:
    """A two-frame GIF."""
    frames = [Image.new("L", (80, 80), shade) for shade in (0, 255)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()
