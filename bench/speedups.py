"""Each speed-up on its own, in this process: the fast decoders against Pillow, the int8 twin against the
float one, what the heatmap (`explain=1`) adds to a served request, and what fetching it costs (it is
drawn then)."""

from __future__ import annotations

import http.client
import io
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from PIL import Image

from .clients import ROUTE, multipart, run_python
from .images import BenchImage
from .twins import time_model

LEAST = 448  # twice the model's input: the scale `prepare` asks of a JPEG


def _median_ms(work: Callable[[], object], repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return round(statistics.median(times) * 1000, 2)


def decoders(images: tuple[BenchImage, ...], repeats: int) -> dict[str, dict[str, float]]:
    """Median ms to decode each image's pixels: Pillow (as `prepare` used it) against the fast decoder."""
    import pyspng
    import simplejpeg

    out = {}
    for image in images:

        def pillow(data: bytes = image.data) -> None:
            img = Image.open(io.BytesIO(data))
            if img.format == "JPEG":
                img.draft(img.mode, (LEAST, LEAST))
            img.load()

        if image.format == "png":
            fast: Callable[[], object] = lambda data=image.data: pyspng.load(data)  # noqa: E731
        else:
            fast = lambda data=image.data: simplejpeg.decode_jpeg(  # noqa: E731
                data, colorspace="GRAY", min_width=LEAST, min_height=LEAST
            )
        out[image.name] = {"pillow_ms": _median_ms(pillow, repeats), "fast_ms": _median_ms(fast, repeats)}
    return out


def twins(model: Path, repeats: int) -> dict[str, float]:
    """Median ms of one batch-1 inference of the float and the int8 twin (one thread)."""
    return {
        "float_ms": round(time_model(model.with_suffix(".onnx"), repeats)[0], 2),
        "int8_ms": round(time_model(model.with_suffix(".int8.onnx"), repeats)[0], 2),
    }


def heatmap(base: str, image: BenchImage, token: str, requests: int) -> dict[str, Any]:
    """p50 at concurrency 1 of a served request without and with `explain=1` (turns alternate), and of
    fetching one answer's heatmap.png, which is drawn over the stored image when fetched."""
    plain, explained = [], []
    for _ in range(3):
        plain.append(run_python(base, image, token, 1, requests).p50_ms)
        explained.append(run_python(base, image, token, 1, requests, explain=True).p50_ms)
    return {
        "p50_ms": statistics.median(plain),
        "p50_explain_ms": statistics.median(explained),
        "p50_fetch_ms": _fetch_p50(base, image, token, requests),
    }


def _fetch_p50(base: str, image: BenchImage, token: str, requests: int) -> float:
    """p50 ms of GET heatmap.png for one prediction made with `explain=1`, over one keep-alive connection."""
    parsed = urlparse(base)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=120)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        body, content_type = multipart(image)
        conn.request("POST", ROUTE + "?explain=1", body, {**auth, "Content-Type": content_type})
        url = json.loads(conn.getresponse().read())["heatmap_url"]
        times = []
        for _ in range(requests):
            began = time.perf_counter()
            conn.request("GET", url, headers=auth)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"GET {url} answered {response.status}")
            times.append(time.perf_counter() - began)
    finally:
        conn.close()
    return round(statistics.median(times) * 1000, 1)
