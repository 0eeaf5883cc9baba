"""Small builders of test inputs."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from PIL import Image
from uuid6 import uuid7

from covidxray.backends.requestlog import PredictionRecord


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


def make_record(**fields: object) -> PredictionRecord:
    """A small, complete prediction record created now; `fields` replace the defaults."""
    defaults: dict[str, object] = dict(
        id=str(uuid7()),
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        backend="fake",
        model_name="fake",
        model_version="1",
        status="ok",
        image_uri="gs://fake/a.png",
        sha256="0" * 64,
        format="png",
        size_bytes=10,
        width=96,
        height=96,
        latency_ms=1.0,
        subject="alice",
        predicted_class="normal",
        score=0.9,
        probabilities={"covid": 0.05, "pneumonia": 0.05, "normal": 0.9},
    )
    return PredictionRecord(**{**defaults, **fields})  # type: ignore[arg-type]
