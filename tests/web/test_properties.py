"""Property-based tests: image sniffing and decoding, and the clinical form validation.

Whatever bytes arrive, `sniff` and `prepare` either succeed or raise the contract's errors; valid
images of any size and mode prepare to the model's tensor; `parse_clinical` only ever raises
InvalidField and gives valid values back unchanged. Examples are kept few so that the suite stays
fast on 2 cores; set HYPOTHESIS_EXAMPLES=5000 for a long run.
"""

from __future__ import annotations

import contextlib
import io
import os
import string
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from covidxray.errors import InvalidField, InvalidImage, UnsupportedModality, UnsupportedType
from covidxray.imaging.prepare import MAX_ASPECT, MIN_SIDE, prepare, sniff
from covidxray.web.clinical import FIELD_NAMES, FLAGS, RANGES, SEXES, parse_clinical, parse_flag

SIZE = 224  # the model's input size
#: Few examples per CI run (HYPOTHESIS_EXAMPLES=5000 for a long fuzzing run); no deadline on a busy CI box.
EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "60"))
examples = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MAGIC = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff",
    "gif": b"GIF89a",
    "dicom": bytes(128) + b"DICM",
}
REJECTIONS = (UnsupportedType, InvalidImage)


def assert_model_input(tensor: np.ndarray) -> None:
    """The model's input: (224, 224, 1) float32, finite, in [0, 1]."""
    assert tensor.shape == (SIZE, SIZE, 1)
    assert tensor.dtype == np.float32
    assert np.isfinite(tensor).all()
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0


def prepare_or_reject(data: bytes, *also: type[Exception]) -> None:
    """`prepare(data)` gives a valid model input, or raises one of the contract's rejections."""
    try:
        prepared = prepare(data, SIZE)
    except (*REJECTIONS, *also):
        return
    assert_model_input(prepared.tensor)
    assert prepared.width >= MIN_SIDE and prepared.height >= MIN_SIDE


# ---------------------------------------------------------------------------------------------
# Arbitrary bytes


@examples
@given(st.binary(max_size=2048))
def test_sniff_names_a_known_format_or_raises_unsupported_type(data):
    with contextlib.suppress(UnsupportedType):
        assert sniff(data) in MAGIC


@examples
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_rejected_as_unsupported_or_invalid(data):
    prepare_or_reject(data)


@examples
@given(st.sampled_from(["png", "jpeg", "gif"]), st.binary(max_size=4096))
def test_arbitrary_bytes_behind_a_known_signature_are_rejected_as_invalid(fmt, tail):
    with pytest.raises(REJECTIONS):
        prepare(MAGIC[fmt] + tail, SIZE)


@examples
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_behind_a_dicom_preamble_are_rejected(tail):
    # DICOM may also say 422: a file without pixel data is `unsupported_modality` by contract
    with pytest.raises((*REJECTIONS, UnsupportedModality)):
        prepare(MAGIC["dicom"] + tail, SIZE)


# ---------------------------------------------------------------------------------------------
# Mutated valid images


def _encode(img: Image.Image, fmt: str, **save: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **save)
    return out.getvalue()


def _seeds() -> list[bytes]:
    gray = Image.linear_gradient("L").resize((96, 80))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0132] = 6, "Maker", "2024:01:01 00:00:00"  # orientation, make, date
    return [
        _encode(gray, "PNG"),
        _encode(gray.convert("RGBA"), "PNG"),
        _encode(gray.convert("P"), "PNG"),
        _encode(Image.fromarray(np.asarray(gray, np.uint16) * 257), "PNG"),
        _encode(gray, "JPEG"),
        _encode(gray.convert("RGB"), "JPEG", progressive=True),
        _encode(gray.convert("CMYK"), "JPEG"),
        _encode(gray, "JPEG", exif=exif.tobytes()),
        _encode(gray, "PNG", exif=exif.tobytes()),
        _encode(gray, "GIF"),
        _encode(gray.convert("P"), "GIF", transparency=0),
    ]


SEEDS = _seeds()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image with a few bytes flipped, replaced, inserted, removed, or cut off."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":  # repeat a stretch of the file (duplicated chunks and markers)
            length = draw(st.integers(1, 64))
            data[at:at] = data[at : at + length]
    return bytes(data)


@examples
@given(mutated_images())
def test_mutated_images_decode_or_are_rejected_never_anything_else(data):
    prepare_or_reject(data)


# ---------------------------------------------------------------------------------------------
# Valid generated images

#: Pillow modes each format can write, as it would be uploaded.
MODES = {
    "PNG": ["L", "LA", "RGB", "RGBA", "P", "1", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P", "RGB"],
}


@st.composite
def valid_images(draw: st.DrawFn) -> tuple[bytes, int, int, str]:
    """An image the contract accepts: any mode, any size from 64 px up to an aspect ratio of 1:4."""
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    width = draw(st.integers(MIN_SIDE, 700))
    height = draw(st.integers(max(MIN_SIDE, int(np.ceil(width / MAX_ASPECT))), int(width * MAX_ASPECT)))
    seed = draw(st.integers(0, 2**32 - 1))
    content = draw(st.sampled_from(["noise", "gradient", "flat"]))
    rng = np.random.default_rng(seed)
    if content == "noise":
        gray = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
    elif content == "gradient":
        gray = Image.linear_gradient("L").resize((width, height))
    else:
        gray = Image.new("L", (width, height), int(rng.integers(0, 256)))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)
    elif mode == "P":
        img = gray.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    else:
        img = gray.convert(mode)
    return _encode(img, fmt), width, height, fmt.lower()


@settings(examples, max_examples=max(EXAMPLES * 2 // 3, 1))
@given(valid_images())
def test_valid_images_of_any_size_and_mode_prepare_to_the_model_input(image):
    data, width, height, fmt = image
    prepared = prepare(data, SIZE)
    assert_model_input(prepared.tensor)
    assert (prepared.width, prepared.height, prepared.format) == (width, height, fmt)
    assert prepared.image.mode == "L"


# ---------------------------------------------------------------------------------------------
# Clinical fields

names = st.one_of(st.sampled_from([*FIELD_NAMES, "explain", "first_name", "email"]), st.text(max_size=12))
values = st.lists(st.text(max_size=20), max_size=3)


@examples
@given(st.dictionaries(names, values, max_size=8))
def test_arbitrary_form_values_only_ever_raise_invalid_field(form):
    try:
        clean = parse_clinical(form)
    except InvalidField as exc:
        assert exc.fields and set(exc.fields) <= set(FIELD_NAMES)
        return
    assert set(clean) <= set(FIELD_NAMES)
    for name, value in clean.items():
        if name in RANGES:
            assert RANGES[name][0] <= value <= RANGES[name][1]
        elif name == "sex":
            assert value in SEXES
        else:
            assert value in (0, 1)


@examples
@given(st.dictionaries(names, values, max_size=4), st.sampled_from(["explain", *FLAGS]))
def test_arbitrary_flag_values_only_ever_raise_invalid_field(form, name):
    try:
        assert parse_flag(form, name) in (True, False)
    except InvalidField as exc:
        assert name in exc.fields


TRUE, FALSE = ["1", "true", "on", "yes", "TRUE", "Yes"], ["0", "false", "off", "no", "False", "NO"]
padding = st.text(alphabet=" \t", max_size=2)


@st.composite
def clinical_forms(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """A form as a browser or a script sends it, and the values it means."""
    expected: dict[str, Any] = {}
    form: dict[str, list[str]] = {}
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), unique=True)):
        if name in RANGES:
            value: Any = draw(st.integers(*RANGES[name]))
            text = str(value).zfill(draw(st.integers(0, 3)))
        elif name == "sex":
            value = draw(st.sampled_from(SEXES))
            text = draw(st.sampled_from([value, value.upper(), value.capitalize()]))
        else:
            value = draw(st.sampled_from([0, 1]))
            text = draw(st.sampled_from(TRUE if value else FALSE))
        expected[name] = value
        form[name] = [draw(padding) + text + draw(padding)]
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), unique=True)):
        form.setdefault(name, [""])  # an empty field is "not given"
    form.update(draw(st.dictionaries(st.sampled_from(["first_name", "email", "zip_code"]), values)))
    return form, expected


@examples
@given(clinical_forms())
def test_valid_clinical_values_round_trip(case):
    form, expected = case
    assert parse_clinical(form) == expected


@examples
@given(
    st.sampled_from(sorted(RANGES)), st.text(alphabet=string.digits + "٠١٢٣٤٥٦٧٨٩²³¹", min_size=1, max_size=8)
)
def test_numbers_are_accepted_only_in_ascii_digits_and_in_range(name, text):
    low, high = RANGES[name]
    valid = text.isascii() and low <= int(text) <= high
    try:
        assert parse_clinical({name: [text]}) == {name: int(text)} and valid
    except InvalidField:
        assert not valid
