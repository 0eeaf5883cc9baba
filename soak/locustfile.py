"""Soak traffic: valid uploads mixed with the hostile ones the service must refuse, each with its status.

Run by soak/run.py (`make soak`), which starts the service and passes SOAK_TOKEN (a valid token),
SOAK_REPORT (where the counts are written at the end) and SOAK_MAX_UPLOAD_MB. Every answer whose
status is not the one expected for its request is a failure and is counted as unexpected.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from locust import HttpUser, between, events, task
from PIL import Image

TOKEN = os.environ.get("SOAK_TOKEN", "")
REPORT = os.environ.get("SOAK_REPORT")
MAX_UPLOAD_MB = int(os.environ.get("SOAK_MAX_UPLOAD_MB", "2"))
SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "samples"

answers: Counter[tuple[str, int]] = Counter()  # (request name, status) -> count
unexpected: Counter[tuple[str, int]] = Counter()


def _encode(img: Image.Image, fmt: str, **save: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **save)
    return out.getvalue()


def _radiographs() -> list[tuple[str, bytes]]:
    """The sample radiographs when present, plus synthetic gray images of several sizes and formats."""
    found = [(p.name, p.read_bytes()) for p in sorted(SAMPLES.glob("*.jpg"))[:4]] if SAMPLES.is_dir() else []
    rng = np.random.default_rng(7)
    for side in (256, 512, 1024):
        noise = rng.normal(128, 40, (side, side)).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(noise).resize((side, side))
        found.append((f"gray-{side}.png", _encode(img, "PNG")))
        found.append((f"gray-{side}.jpg", _encode(img, "JPEG", quality=90)))
    return found


def _animated_gif() -> bytes:
    frames = [Image.new("L", (96, 96), shade) for shade in (0, 255)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _unsigned_token() -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'sub': 'soak', 'exp': 4102444800, 'scope': 'predict'})}."


VALID = _radiographs()
JPEG = next(data for name, data in VALID if name.endswith(".jpg"))
#: (name, multipart file bytes, extra form fields, expected status)
INVALID_FILES = [
    ("text named .png", b"this is not an image", {}, 415),
    ("truncated JPEG", JPEG[: len(JPEG) // 3], {}, 400),
    ("zero-byte file", b"", {}, 400),
    ("1x1 PNG", _encode(Image.new("L", (1, 1)), "PNG"), {}, 400),
    ("4000x3 PNG", _encode(Image.new("L", (4000, 3)), "PNG"), {}, 400),
    ("animated GIF", _animated_gif(), {}, 415),
    ("PDF", b"%PDF-1.7\n%%EOF\n", {}, 415),
    ("age out of range", VALID[0][1], {"age": "300"}, 400),
    ("flag not 0/1", VALID[0][1], {"fever": "maybe"}, 400),
]
OVERSIZED = b"\x89PNG\r\n\x1a\n" + bytes((MAX_UPLOAD_MB << 20) + 1024)


class Client(HttpUser):
    """A script client of the API: mostly valid X-rays, sometimes garbage."""

    wait_time = between(0.01, 0.1)

    def _post(self, name: str, expected: int, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Authorization": f"Bearer {TOKEN}"})
        with self.client.post("/api/v1/predict", name=name, catch_response=True, **kwargs) as response:
            answers[(name, response.status_code)] += 1
            if response.status_code == expected:
                response.success()
            else:
                unexpected[(name, response.status_code)] += 1
                error = f" ({type(response.error).__name__}: {response.error})" if response.error else ""
                response.failure(f"expected {expected}, got {response.status_code}{error}")

    @task(10)
    def valid_multipart(self) -> None:
        name, data = random.choice(VALID)
        fields = {"age": str(random.randint(0, 120)), "cough": random.choice(["0", "1"])}
        self._post("valid multipart", 200, files={"image": (name, data)}, data=fields)

    @task(4)
    def valid_raw(self) -> None:
        name, data = random.choice(VALID)
        kind = "image/png" if name.endswith(".png") else "image/jpeg"
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": kind}
        self._post("valid raw body", 200, data=data, headers=headers)

    @task(6)
    def invalid_file(self) -> None:
        name, data, fields, expected = random.choice(INVALID_FILES)
        self._post(f"invalid: {name}", expected, files={"image": ("x.png", data)}, data=fields)

    @task(2)
    def invalid_body(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        self._post("invalid: JSON body", 415, data=b'{"image": "abc"}', headers=headers)

    @task(2)
    def invalid_token(self) -> None:
        headers = random.choice([{}, {"Authorization": f"Bearer {_unsigned_token()}"}])
        self._post("invalid: token", 401, files={"image": VALID[0]}, headers=headers)

    @task(1)
    def oversized(self) -> None:
        # gunicorn drains at most 64 KiB of a body the app refused unread, then closes the connection
        # (without saying so in the 413): a client must not reuse it, so this request asks to close it.
        headers = {"Authorization": f"Bearer {TOKEN}", "Connection": "close"}
        self._post(
            "invalid: over the upload limit", 413, files={"image": ("big.png", OVERSIZED)}, headers=headers
        )


@events.quitting.add_listener
def write_report(environment: Any, **_: Any) -> None:
    """Leave the counts where run.py reads them."""
    if REPORT:
        rows = [{"name": n, "status": s, "count": c} for (n, s), c in sorted(answers.items())]
        bad = [{"name": n, "status": s, "count": c} for (n, s), c in sorted(unexpected.items())]
        Path(REPORT).write_text(json.dumps({"answers": rows, "unexpected": bad}, indent=1))
