"""Hostile and unusual uploads: every bad input gets the contract's 4xx, never a 500, and stores nothing.

Extends test_api.py's BAD_INPUTS (not repeated here) with the API's raw-body path, the browser
form, bombs, forged types, odd encodings and file names, and the valid-but-unusual images that
must be accepted. The 413 case is also checked over real HTTP against gunicorn.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import socket
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from covidxray import create_app
from covidxray.backends.requestlog import SqliteRequestLog
from covidxray.settings import Settings
from covidxray.web.auth import issue_token
from tests.helpers import animated_gif, image_bytes
from tests.servers import gunicorn

# ---------------------------------------------------------------------------------------------
# Builders of hostile bytes


def encode(img: Image.Image, fmt: str, **save: Any) -> bytes:
    """`img` encoded as `fmt`."""
    out = io.BytesIO()
    img.save(out, fmt, **save)
    return out.getvalue()


def gradient(size: tuple[int, int], mode: str = "L") -> Image.Image:
    """A smooth gradient of `size` in `mode` (a plausible stand-in for a radiograph)."""
    return Image.linear_gradient("L").resize(size).convert(mode)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def png_bomb(side: int = 10_000) -> bytes:
    """A valid `side`×`side` black PNG: 100 million pixels in about 100 kB."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + one 8-bit gray sample per pixel
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` (decoding it would allocate gigabytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header is patched to claim `width`×`height`."""
    data = bytearray(encode(gradient((128, 128)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A small GIF whose screen and image descriptors are patched to claim `width`×`height`."""
    data = bytearray(encode(gradient((128, 128)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    descriptor = data.index(b"\x2c", 13)
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def png_with_bad_crc() -> bytes:
    data = bytearray(image_bytes((256, 256)))
    data[29] ^= 0xFF  # inside the IHDR chunk's CRC
    return bytes(data)


def zip_archive() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("xray.png", image_bytes((256, 256)))
    return out.getvalue()


def cmyk_jpeg() -> bytes:
    return encode(gradient((320, 256), "CMYK"), "JPEG")


def exif_jpeg(size: tuple[int, int], orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(gradient(size), "JPEG", exif=exif.tobytes())


def damaged_exif_jpeg() -> bytes:
    """A JPEG (orientation 6) with one EXIF tag number damaged: readable, but Pillow cannot re-encode it."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0132] = 6, "Maker", "2024:01:01 00:00:00"
    data = bytearray(encode(gradient((320, 240)), "JPEG", exif=exif.tobytes()))
    data[data.index(b"Exif\x00\x00") + 17] = 0
    return bytes(data)


def png16() -> bytes:
    ramp = np.linspace(0, 65535, 300 * 240).reshape(240, 300).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def palette_png(transparency: bool = False) -> bytes:
    img = gradient((300, 240), "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encode(img, "PNG", **({"transparency": 0} if transparency else {}))


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="512" height="512"/>'
HTML = b"<!doctype html><html><body><script>alert(1)</script></body></html>"
PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"

#: Bytes that are not PNG, JPEG, DICOM or still GIF, whatever they are named or declared as.
FOREIGN = {
    "SVG": lambda: SVG,
    "HTML": lambda: HTML,
    "PDF": lambda: PDF,
    "ZIP": zip_archive,
    "TIFF": lambda: encode(gradient((256, 256)), "TIFF"),
    "WebP": lambda: encode(gradient((256, 256)), "WEBP"),
    "BMP": lambda: encode(gradient((256, 256)), "BMP"),
    "animated GIF": animated_gif,
}

#: Bytes of a known format that cannot be used as an X-ray.
BROKEN = {
    "truncated JPEG": lambda: encode(gradient((512, 512)), "JPEG")[:1500],
    "JPEG markers only": lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "PNG signature only": lambda: b"\x89PNG\r\n\x1a\n",
    "PNG with a bad CRC": png_with_bad_crc,
    "truncated GIF": lambda: encode(gradient((256, 256)), "GIF")[:200],
    "GIF ending in a dangling extension": lambda: encode(gradient((256, 256)), "GIF")[:-1] + b"\x21",
    "GIF ending in a dangling image descriptor": lambda: encode(gradient((256, 256)), "GIF")[:-1] + b"\x2c",
    "GIF header followed by HTML": lambda: b"GIF89a" + HTML,
    "decompression bomb PNG (10000x10000, 100 kB)": png_bomb,
    "PNG claiming 100000x100000": lambda: png_claiming(100_000, 100_000),
    "JPEG claiming 65000x65000": lambda: jpeg_claiming(65_000, 65_000),
    "GIF claiming 65535x65535": lambda: gif_claiming(65_535, 65_535),
    "1x1 JPEG": lambda: encode(gradient((1, 1)), "JPEG"),
    "1x1 GIF": lambda: encode(gradient((1, 1)), "GIF"),
    "4000x3 JPEG": lambda: encode(gradient((4000, 3)), "JPEG"),
    "3x4000 PNG": lambda: image_bytes((3, 4000)),
    "63x64 PNG": lambda: image_bytes((63, 64)),
    "256x1025 PNG (beyond 1:4)": lambda: image_bytes((256, 1025)),
}

# ---------------------------------------------------------------------------------------------
# Requests


def multipart(parts: list[tuple[bytes, bytes | None, bytes]], boundary: str = "hostile-boundary") -> dict:
    """Keyword arguments of a hand-built multipart request: (name, filename or None, value) per part.

    Built by hand so that names, file names and values can be any bytes (NUL, non-UTF-8).
    """
    body = b""
    for name, filename, value in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        body += b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + value + b"\r\n"
    body += b"--" + boundary.encode() + b"--\r\n"
    return {"data": body, "content_type": f"multipart/form-data; boundary={boundary}"}


def upload(data: bytes, name: str = "x.png", **fields: Any) -> dict:
    """Keyword arguments of a multipart request with one `image` file and `fields`."""
    return {"data": {"image": (io.BytesIO(data), name), **fields}, "content_type": "multipart/form-data"}


def raw(data: bytes, content_type: str | None, query: str = "") -> dict:
    """Keyword arguments of a raw-body request."""
    kwargs: dict[str, Any] = {"data": data, "query_string": query}
    if content_type is not None:
        kwargs["content_type"] = content_type
    return kwargs


def valid() -> bytes:
    return image_bytes((256, 256))


@dataclass
class Case:
    """One hostile request: how to build it, and the status and error code it must get."""

    name: str
    build: Callable[[], dict]
    status: int
    code: str
    params: list = field(init=False)

    def __post_init__(self) -> None:
        self.params = [self.build, self.status, self.code]


API_CASES = [
    # no image at all
    Case("empty raw PNG body", lambda: raw(b"", "image/png"), 400, "missing_image"),
    Case("empty raw DICOM body", lambda: raw(b"", "application/dicom"), 400, "missing_image"),
    Case("empty multipart body", lambda: raw(b"", "multipart/form-data; boundary=x"), 400, "missing_image"),
    Case("multipart without a boundary", lambda: raw(valid(), "multipart/form-data"), 400, "missing_image"),
    Case("file in another field", lambda: multipart([(b"file", b"x.png", valid())]), 400, "missing_image"),
    Case("image sent as a text field", lambda: multipart([(b"image", None, valid())]), 400, "missing_image"),
    Case("zero-byte legacy payload", lambda: multipart([(b"payload", b"x.png", b"")]), 400, "invalid_image"),
    # wrong or missing Content-Type
    Case("PNG body without a Content-Type", lambda: raw(valid(), None), 415, "unsupported_type"),
    Case("PNG body as text/plain", lambda: raw(valid(), "text/plain"), 415, "unsupported_type"),
    Case("PNG body as octet-stream", lambda: raw(valid(), "application/octet-stream"), 415,
         "unsupported_type"),
    Case("PNG body as image/webp", lambda: raw(valid(), "image/webp"), 415, "unsupported_type"),
    Case("urlencoded form", lambda: raw(b"image=abc&age=3", "application/x-www-form-urlencoded"), 415,
         "unsupported_type"),
    Case("JSON with a base64 image", lambda: raw(json.dumps({"image": "iVBORw0KGgo="}).encode(),
                                                 "application/json"), 415, "unsupported_type"),
    Case("text declared image/png", lambda: raw(b"hello", "image/png"), 415, "unsupported_type"),
    # foreign formats, named and declared as PNG
    *[Case(f"{kind} as a file named .png", lambda b=build: upload(b()), 415, "unsupported_type")
      for kind, build in FOREIGN.items()],
    *[Case(f"{kind} as a raw image/png body", lambda b=build: raw(b(), "image/png"), 415, "unsupported_type")
      for kind, build in FOREIGN.items()],
    # broken, bombs and bad geometry
    *[Case(kind, lambda b=build: upload(b()), 400, "invalid_image") for kind, build in BROKEN.items()],
    Case("truncated JPEG as a raw body", lambda: raw(BROKEN["truncated JPEG"](), "image/jpeg"), 400,
         "invalid_image"),
    Case("bomb as a raw body", lambda: raw(png_bomb(), "image/png"), 400, "invalid_image"),
    # fields
    Case("age twice", lambda: upload(valid(), age=["40", "41"]), 400, "invalid_field"),
    Case("fever twice", lambda: upload(valid(), fever=["1", "1"]), 400, "invalid_field"),
    Case("explain twice in the query", lambda: raw(valid(), "image/png", "explain=1&explain=0"), 400,
         "invalid_field"),
    Case("age twice in the query", lambda: raw(valid(), "image/png", "age=3&age=4"), 400, "invalid_field"),
    Case("age out of range in the query", lambda: raw(valid(), "image/png", "age=200"), 400, "invalid_field"),
    Case("explain not 0/1", lambda: upload(valid(), explain="please"), 400, "invalid_field"),
    Case("payload twice and image", lambda: multipart(
        [(b"image", b"a.png", valid()), (b"payload", b"b.png", valid()), (b"payload", b"c.png", valid())]
    ), 400, "invalid_field"),
    # non-UTF-8 and odd bytes in form data
    Case("non-UTF-8 age", lambda: multipart([(b"image", b"x.png", valid()), (b"age", None, b"\xff\xfe4")]),
         400, "invalid_field"),
    Case("Latin-1 sex", lambda: multipart([(b"image", b"x.png", valid()), (b"sex", None, b"f\xe9male")]),
         400, "invalid_field"),
    Case("NUL in a field", lambda: multipart([(b"image", b"x.png", valid()), (b"age", None, b"4\x000")]),
         400, "invalid_field"),
    # Werkzeug drops a multipart body whose part headers are not UTF-8 (browsers always send UTF-8)
    Case("non-UTF-8 file name", lambda: multipart([(b"image", b"\xff\xfe.png", valid())]), 400,
         "missing_image"),
    Case("non-UTF-8 query string", lambda: raw(valid(), "image/png", "age=%FF%FE"), 400, "invalid_field"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "status", "code"), [c.params for c in API_CASES], ids=[c.name for c in API_CASES]
)
def test_api_answers_bad_input_with_its_4xx_and_stores_nothing(client, auth, stored, build, status, code):
    response = client.post("/api/v1/predict", headers=auth, **build())
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    assert stored() == (0, 0)


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("age", "-1"),
        ("age", "121"),
        ("age", "3.5"),
        ("age", "forty"),
        ("age", "1e2"),
        ("age", "0x10"),
        ("age", "٣"),  # an Arabic-Indic digit: str.isdigit() says yes
        ("age", "²"),  # a superscript: isdigit() says yes, int() says no
        ("age", "9" * 5000),  # longer than int() converts
        ("symptom_days", "61"),
        ("symptom_days", "+3"),
        ("sex", "f"),
        ("sex", "1"),
        ("fever", "2"),
        ("fever", "-1"),
        ("cough", "yes please"),
        ("chest_pain", "[1]"),
    ],
)
def test_clinical_field_out_of_range_or_of_the_wrong_type_is_400(client, auth, stored, field_name, value):
    response = client.post("/api/v1/predict", headers=auth, **upload(valid(), **{field_name: value}))
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "invalid_field" and field_name in error["fields"]
    assert "int()" not in error["message"] and "limit" not in error["message"]
    assert stored() == (0, 0)


def test_api_reads_no_more_than_a_little_of_a_body_declared_too_large(settings, predictor, stored):
    small = create_app(settings=replace(settings, max_upload_mb=1), predictor=predictor)
    stream = CountingStream(b"\x89PNG\r\n\x1a\n" + bytes(4096))
    response = small.test_client().post(
        "/api/v1/predict",
        headers={"Authorization": f"Bearer {issue_token(settings, 'a')}"},
        content_type="image/png",
        input_stream=stream,
        environ_overrides={"CONTENT_LENGTH": str(50 << 20)},
    )
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "too_large"
    assert stream.read_bytes <= 4096
    assert stored() == (0, 0)


def test_raw_body_over_the_limit_is_413(settings, predictor, stored):
    small = create_app(settings=replace(settings, max_upload_mb=1), predictor=predictor)
    response = small.test_client().post(
        "/api/v1/predict",
        headers={"Authorization": f"Bearer {issue_token(settings, 'a')}"},
        **raw(b"\x89PNG\r\n\x1a\n" + bytes(2 << 20), "image/png"),
    )
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "too_large"
    assert stored() == (0, 0)


@pytest.mark.parametrize(
    "content_type", ["image/png", "application/dicom", "multipart/form-data; boundary=b"]
)
def test_streamed_body_without_length_over_the_limit_is_413_not_cut_short(
    settings, predictor, stored, content_type
):
    small = create_app(settings=replace(settings, max_upload_mb=1), predictor=predictor)
    body = image_bytes((1200, 1200), compress_level=0)  # a valid 1.4 MB PNG: cut at 1 MB it would be a 400
    assert len(body) > 1 << 20
    response = small.test_client().post(
        "/api/v1/predict",
        headers={"Authorization": f"Bearer {issue_token(settings, 'a')}", "Transfer-Encoding": "chunked"},
        content_type=content_type,
        input_stream=io.BytesIO(body),
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "too_large"
    assert stored() == (0, 0)


class CountingStream(io.BytesIO):
    """A request body that counts how much of it the server read."""

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.read_bytes += len(chunk)
        return chunk

    def readline(self, size: int | None = -1) -> bytes:
        chunk = super().readline(size)
        self.read_bytes += len(chunk)
        return chunk


# ---------------------------------------------------------------------------------------------
# Valid but unusual images, and hostile file names: accepted


@dataclass
class Unusual:
    name: str
    build: Callable[[], bytes]
    size: tuple[int, int]  # width, height the API must report
    format: str


UNUSUAL = [
    Unusual("CMYK JPEG", cmyk_jpeg, (320, 256), "jpeg"),
    Unusual("16-bit grayscale PNG", png16, (300, 240), "png"),
    Unusual("palette PNG", palette_png, (300, 240), "png"),
    Unusual("palette PNG with transparency", lambda: palette_png(True), (300, 240), "png"),
    Unusual("gray+alpha PNG", lambda: encode(gradient((300, 240), "LA"), "PNG"), (300, 240), "png"),
    Unusual("RGBA PNG", lambda: encode(gradient((300, 240), "RGBA"), "PNG"), (300, 240), "png"),
    Unusual("1-bit PNG", lambda: encode(gradient((300, 240), "1"), "PNG"), (300, 240), "png"),
    Unusual("interlaced PNG", lambda: encode(gradient((300, 240)), "PNG", interlace=1), (300, 240), "png"),
    Unusual("progressive JPEG", lambda: encode(gradient((300, 240)), "JPEG", progressive=True), (300, 240),
            "jpeg"),
    Unusual("still GIF", lambda: encode(gradient((300, 240)), "GIF"), (300, 240), "gif"),
    Unusual("EXIF orientation 6 JPEG", lambda: exif_jpeg((320, 240), 6), (240, 320), "jpeg"),
    Unusual("EXIF orientation 8 JPEG", lambda: exif_jpeg((320, 240), 8), (240, 320), "jpeg"),
    Unusual("EXIF orientation 3 JPEG", lambda: exif_jpeg((320, 240), 3), (320, 240), "jpeg"),
    Unusual("JPEG with a damaged EXIF tag", damaged_exif_jpeg, (240, 320), "jpeg"),
    Unusual("large EXIF orientation 6 JPEG", lambda: exif_jpeg((2400, 1800), 6), (1800, 2400), "jpeg"),
    Unusual("large JPEG (decoded at a reduced scale)", lambda: encode(gradient((2400, 1800)), "JPEG"),
            (2400, 1800), "jpeg"),
    Unusual("64x64 PNG (smallest accepted)", lambda: image_bytes((64, 64)), (64, 64), "png"),
    Unusual("256x1024 PNG (1:4 exactly)", lambda: image_bytes((256, 1024)), (256, 1024), "png"),
]  # fmt: skip


@pytest.mark.parametrize("case", UNUSUAL, ids=[c.name for c in UNUSUAL])
def test_valid_but_unusual_images_are_accepted_with_their_upright_size(client, auth, stored, case):
    response = client.post("/api/v1/predict", headers=auth, **upload(case.build(), "x.bin"))
    assert response.status_code == 200, response.get_data(as_text=True)
    image = response.get_json()["image"]
    assert (image["width"], image["height"]) == case.size
    assert image["format"] == case.format
    assert stored() == (1, 1)


@pytest.mark.parametrize(
    ("declared", "data", "fmt"),
    [
        ("image/png", lambda: encode(gradient((256, 256)), "JPEG"), "jpeg"),
        ("image/jpeg", lambda: image_bytes((256, 256)), "png"),
        ("application/dicom", lambda: image_bytes((256, 256)), "png"),
        ("image/png; charset=utf-8", lambda: image_bytes((256, 256)), "png"),
    ],
    ids=["JPEG declared PNG", "PNG declared JPEG", "PNG declared DICOM", "parameters on the type"],
)
def test_raw_body_format_is_sniffed_not_trusted(client, auth, declared, data, fmt):
    response = client.post("/api/v1/predict", headers=auth, **raw(data(), declared))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["image"]["format"] == fmt


HOSTILE_NAMES = [
    b"../../../../../../tmp/covidxray-escape.png",
    b"..\\..\\..\\windows\\covidxray-escape.png",
    b"/etc/covidxray-escape.png",
    b"nul\x00byte.png",
    b"x" * 1000 + b".png",
    "röntgen-胸部-😷.png".encode(),
    b"",
]


@pytest.mark.parametrize(
    "filename", HOSTILE_NAMES, ids=["../", "..\\", "absolute", "NUL", "1000 chars", "Unicode", "empty"]
)
def test_hostile_file_names_are_accepted_and_never_used_as_paths(client, auth, stored, tmp_path, filename):
    data = image_bytes((256, 256))
    response = client.post("/api/v1/predict", headers=auth, **multipart([(b"image", filename, data)]))
    assert response.status_code == 200, response.get_data(as_text=True)
    digest = hashlib.sha256(data).hexdigest()
    uploads = tmp_path / "uploads"
    assert [p.relative_to(uploads).as_posix() for p in uploads.rglob("*") if p.is_file()] == [
        f"{digest[:2]}/{digest[2:4]}/{digest}.png"
    ]
    assert stored() == (1, 1)
    assert not Path("/tmp/covidxray-escape.png").exists() and not Path("/etc/covidxray-escape.png").exists()
    readable = filename.decode("utf-8", "replace").replace("\x00", "")
    stem = readable.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].removesuffix(".png")
    if stem:
        assert stem not in response.get_data(as_text=True)
        assert stem.encode() not in (tmp_path / "requests.sqlite3").read_bytes()


# ---------------------------------------------------------------------------------------------
# The browser form


def csrf(client) -> str:
    """The CSRF token of a fresh form page in `client`'s session."""
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def form_post(client, parts: list[tuple[bytes, bytes | None, bytes]], token: str | None = None) -> Any:
    """POST `parts` to the form with a valid CSRF token (unless `token` says otherwise)."""
    token = csrf(client) if token is None else token
    return client.post("/", **multipart([(b"csrf_token", None, token.encode()), *parts]))


def image_part(data: bytes, filename: bytes = b"x.png") -> tuple[bytes, bytes, bytes]:
    return (b"image", filename, data)


FORM_CASES = [
    ("zero-byte file", lambda: [image_part(b"")], 400, "Choose an X-ray image to upload."),
    ("file in another field", lambda: [(b"file", b"x.png", valid())], 400,
     "Choose an X-ray image to upload."),
    *[(f"{kind} named .png", lambda b=build: [image_part(b())], 415,
       "animated GIFs are not accepted" if kind == "animated GIF" else "only PNG, JPEG, DICOM and still GIF")
      for kind, build in FOREIGN.items()],
    *[(kind, lambda b=build: [image_part(b())], 400, "") for kind, build in BROKEN.items()],
    ("age twice", lambda: [image_part(valid()), (b"age", None, b"3"), (b"age", None, b"4")], 400,
     "give this field once"),
    ("age of the wrong type", lambda: [image_part(valid()), (b"age", None, b"3.5")], 400,
     "must be a whole number from 0 to 120"),
    ("Arabic-Indic digit age", lambda: [image_part(valid()), (b"age", None, "٣".encode())], 400,
     "must be a whole number from 0 to 120"),
    ("flag not 0/1", lambda: [image_part(valid()), (b"fever", None, b"2")], 400, "must be 0 or 1"),
    ("non-UTF-8 field", lambda: [image_part(valid()), (b"symptom_days", None, b"\xff")], 400,
     "must be a whole number from 0 to 60"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("parts", "status", "message"), [c[1:] for c in FORM_CASES], ids=[c[0] for c in FORM_CASES]
)
def test_form_answers_bad_input_with_its_4xx_and_stores_nothing(client, stored, parts, status, message):
    response = form_post(client, parts())
    assert response.status_code == status, response.get_data(as_text=True)[:2000]
    page = response.get_data(as_text=True)
    assert 'role="alert"' in page and message in page and "Traceback" not in page
    assert stored() == (0, 0)


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        (raw(json.dumps({"image": "iVBORw0KGgo="}).encode(), "application/json"), 400),
        (raw(b"", None), 400),
        (raw(b"image=x", "application/x-www-form-urlencoded"), 400),
    ],
    ids=["JSON body", "empty body", "urlencoded without a CSRF token"],
)
def test_form_refuses_bodies_that_are_not_its_form(client, stored, kwargs, status):
    response = client.post("/", **kwargs)
    assert response.status_code == status
    assert stored() == (0, 0)


@pytest.mark.parametrize(
    "case", UNUSUAL[:3] + UNUSUAL[10:11], ids=[c.name for c in UNUSUAL[:3] + UNUSUAL[10:11]]
)
def test_form_accepts_valid_but_unusual_images(client, stored, case):
    response = form_post(client, [image_part(case.build())])
    assert response.status_code == 303
    assert stored() == (1, 1)


@pytest.mark.parametrize("filename", HOSTILE_NAMES[:5], ids=["../", "..\\", "absolute", "NUL", "1000 chars"])
def test_form_accepts_hostile_file_names(client, stored, filename):
    response = form_post(client, [image_part(image_bytes((256, 256)), filename)])
    assert response.status_code == 303
    assert stored() == (1, 1)


def test_form_body_over_the_limit_is_413_and_stores_nothing(settings, predictor, stored):
    small = create_app(settings=replace(settings, max_upload_mb=1), predictor=predictor).test_client()
    response = form_post(small, [image_part(b"\x89PNG\r\n\x1a\n" + bytes(2 << 20))])
    assert response.status_code == 413
    assert stored() == (0, 0)


# ---------------------------------------------------------------------------------------------
# Over real HTTP: a declared body over the limit is answered without waiting for it


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("small")
    secret = "hostile-" + "s" * 40
    with gunicorn(data_dir, workers=1, COVIDXRAY_MAX_UPLOAD_MB="1", COVIDXRAY_JWT_SECRET=secret) as url:
        yield url, issue_token(Settings(jwt_keys={"": secret}), "hostile"), data_dir


def send_head_only(
    url: str, path: str, headers: dict[str, str], body_sent: bytes
) -> tuple[int, bytes, float]:
    """Send a request line and headers, then only `body_sent` of the declared body; read the answer.

    The rest of the body is never sent, so a server that waited for it would never answer.
    """
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        sock.sendall(head.encode() + b"\r\n" + body_sent)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1], time.monotonic() - started


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "content_type", "sent"),
    [
        ("/api/v1/predict", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(1024)),
        (
            "/api/v1/predict",
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="image"',
        ),
        ("/", "multipart/form-data; boundary=b", b"--b\r\n"),
    ],
    ids=["raw API body", "multipart API body", "browser form"],
)
def test_declared_oversize_body_is_refused_over_http_without_waiting_for_it(
    small_server, path, content_type, sent
):
    url, token, data_dir = small_server
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": content_type,
        "Content-Length": str(200 << 20),
    }
    status, body, elapsed = send_head_only(url, path, headers, sent)
    assert status == 413  # answered while 200 MB of the declared body were still unsent
    assert elapsed < 60, f"the server waited {elapsed:.0f} s for a body it should refuse at once"
    if path.startswith("/api/"):
        assert json.loads(body)["error"]["code"] == "too_large"
    assert_nothing_stored(data_dir)


@pytest.mark.slow
@pytest.mark.parametrize("content_type", ["image/png", "multipart/form-data; boundary=b"])
def test_streamed_oversize_body_is_refused_over_http(small_server, content_type):
    url, token, data_dir = small_server

    def chunks():  # requests sends a generator with Transfer-Encoding: chunked, no Content-Length
        yield b"\x89PNG\r\n\x1a\n"
        for _ in range(40):
            yield bytes(64 << 10)

    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type, "Connection": "close"}
    response = requests.post(f"{url}/api/v1/predict", data=chunks(), headers=headers, timeout=10)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    assert_nothing_stored(data_dir)


def assert_nothing_stored(data_dir: Path) -> None:
    uploads, requests_log = data_dir / "uploads", data_dir / "requests.sqlite3"
    assert not uploads.exists() or not any(p.is_file() for p in uploads.rglob("*"))
    assert not requests_log.exists() or SqliteRequestLog(requests_log).count() == 0
