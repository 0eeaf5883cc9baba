"""DICOM uploads: rendering (LUTs, window, MONOCHROME1, bit depth), modality checks, de-identification."""

from __future__ import annotations

import io
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from covidxray.backends.requestlog import SqliteRequestLog
from covidxray.errors import ApiError, InvalidImage, UnsupportedModality
from covidxray.imaging.dicom import LATERAL_WARNING, decode_dicom
from covidxray.imaging.prepare import prepare
from covidxray.labels import LABELS

#: Probabilities of the same radiograph sent as DICOM and as PNG agree within this.
TOLERANCE = 0.02
MAX_PIXELS = 50_000_000
ORIGINAL_UIDS = {
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1111.4242",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.1111.4243",
    "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.1111.4244",
}
IDENTIFYING = {
    "PatientName": "QUIXOTE^DULCINEA",
    "PatientID": "MRN-8675309",
    "PatientBirthDate": "19580412",
    "AccessionNumber": "ACC-4711-XYZ",
    "InstitutionName": "Hospital de la Mancha",
    "InstitutionAddress": "Calle Toboso 7, El Toboso",
    "ReferringPhysicianName": "CARRASCO^SANSON",
    "StudyDate": "20260314",
    "OtherPatientIDs": "OTHER-5550199",
    **ORIGINAL_UIDS,
}
SECRETS = [v for k, v in IDENTIFYING.items() if k != "StudyDate"] + [
    "QUIXOTE",
    "DULCINEA",
    "PRIVATE-SECRET-77",
]


def gradient(rows: int = 96, cols: int = 128, top: int = 4095) -> np.ndarray:
    """A horizontal gradient from 0 to `top` with a brighter square, as uint16."""
    arr = np.tile(np.linspace(0, top, cols), (rows, 1))
    arr[rows // 4 : rows // 2, cols // 4 : cols // 2] = top * 0.9
    return np.rint(arr).astype(np.uint16)


def build(
    pixels: np.ndarray | None,
    *,
    bits: int = 12,
    syntax: str = ExplicitVRLittleEndian,
    encapsulated: bytes | None = None,
    **attrs: Any,
) -> bytes:
    """A DX "for presentation" DICOM file with identifying attributes and a private tag."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.Modality, ds.ViewPosition, ds.PatientSex = "DX", "PA", "F"
    for key, value in IDENTIFYING.items():
        setattr(ds, key, value)
    ds.private_block(0x0011, "ACME XRAY", create=True).add_new(0x01, "LO", "PRIVATE-SECRET-77")
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if encapsulated is not None or pixels is not None:
        rows, cols = (
            pixels.shape[-2:] if pixels is not None else Image.open(io.BytesIO(encapsulated)).size[::-1]
        )
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = 8 if bits <= 8 else 16
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    if encapsulated is not None:
        ds.PixelData = encapsulate([encapsulated])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    elif pixels is not None:
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.PixelData = pixels.astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def rendered(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The display image decode_dicom makes, as an array."""
    return np.asarray(decode_dicom(data, max_pixels=max_pixels).image, dtype=np.int16)


# --- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_full_range_is_scaled_to_8_bits_at_any_depth(bits):
    arr = gradient(top=2**bits - 1)
    decoded = decode_dicom(build(arr, bits=bits), max_pixels=MAX_PIXELS)
    assert decoded.image.mode == "L" and decoded.image.size == (128, 96)
    expected = np.rint(arr / (2**bits - 1) * 255)
    assert np.abs(np.asarray(decoded.image) - expected).max() <= 1
    study = decoded.fields.pop("study_uid")  # kept in the record only for what a PACS sent
    assert decoded.fields == {"modality": "DX", "view_position": "PA", "bits_stored": bits} and study
    assert decoded.warnings == []


def test_monochrome1_is_inverted():
    arr = gradient()
    mono2 = rendered(build(arr))
    mono1 = rendered(build(arr, PhotometricInterpretation="MONOCHROME1"))
    assert np.array_equal(mono1, 255 - mono2)


def test_rescale_then_window_are_applied():
    arr = gradient()  # stored 0..4095; rescaled to -1024..3071; window 0..1000 shows the middle
    image = rendered(build(arr, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=500, WindowWidth=1000))
    values = arr.astype(float) - 1024
    expected = np.clip(((values - 499.5) / 999 + 0.5), 0, 1) * 255  # PS3.3 C.11.2.1.2.1
    assert np.abs(image - np.rint(expected)).max() <= 1
    assert image.min() == 0 and image.max() == 255


def test_window_on_monochrome1_is_inverted_after_windowing():
    arr = gradient()
    mono2 = rendered(build(arr, WindowCenter=2048, WindowWidth=2048))
    mono1 = rendered(build(arr, WindowCenter=2048, WindowWidth=2048, PhotometricInterpretation="MONOCHROME1"))
    assert np.array_equal(mono1, 255 - mono2)


@pytest.mark.parametrize("width", [0, "", [0, 100]])
def test_an_unusable_window_is_ignored(width):
    arr = gradient()
    assert np.array_equal(rendered(build(arr, WindowCenter=100, WindowWidth=width)), rendered(build(arr)))


def test_multiple_windows_use_the_first():
    arr = gradient()
    both = rendered(build(arr, WindowCenter=[2048, 100], WindowWidth=[4096, 10]))
    assert np.array_equal(both, rendered(build(arr, WindowCenter=2048, WindowWidth=4096)))


def test_voi_lut_is_applied_and_wins_over_the_window():
    arr = gradient()
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new("LUTData", "US", [255 - i // 16 for i in range(4096)])  # an inverting LUT
    image = rendered(build(arr, VOILUTSequence=Sequence([item]), WindowCenter=10, WindowWidth=2))
    assert np.abs(image - (255 - arr // 16)).max() <= 1


def test_modality_lut_sequence_is_applied():
    arr = gradient(top=255)
    item = Dataset()
    item.LUTDescriptor, item.ModalityLUTType = [256, 0, 16], "US"
    item.add_new("LUTData", "US", [(255 - i) * 100 for i in range(256)])
    image = rendered(build(arr, bits=8, ModalityLUTSequence=Sequence([item])))
    assert np.abs(image - (255 - arr)).max() <= 1


def test_jpeg_compressed_pixels_are_decoded():
    arr = gradient(top=255).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(arr).save(jpeg, "JPEG", quality=95)
    data = build(None, bits=8, syntax=JPEGBaseline8Bit, encapsulated=jpeg.getvalue())
    expected = np.asarray(Image.open(jpeg), dtype=np.int16)
    lo, hi = expected.min(), expected.max()
    assert np.abs(rendered(data) - np.rint((expected - lo) / (hi - lo) * 255)).max() <= 1
    by_pylibjpeg = pixel_array(pydicom.dcmread(io.BytesIO(data)), decoding_plugin="pylibjpeg")
    assert np.abs(by_pylibjpeg.astype(np.int16) - expected).max() <= 2


def test_implicit_little_endian_is_read():
    assert rendered(build(gradient(), syntax=ImplicitVRLittleEndian)).max() == 255


def test_multi_frame_uses_the_first_frame_and_says_so():
    frames = np.stack([gradient(), 4095 - gradient()])
    decoded = decode_dicom(build(frames), max_pixels=MAX_PIXELS)
    assert np.array_equal(np.asarray(decoded.image, dtype=np.int16), rendered(build(gradient())))
    assert decoded.warnings == ["DICOM has 2 frames; only the first was used"]


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL"])
def test_lateral_view_is_a_warning(view):
    decoded = decode_dicom(build(gradient(), ViewPosition=view), max_pixels=MAX_PIXELS)
    assert decoded.warnings == [LATERAL_WARNING] and decoded.fields["view_position"] == view


# --- rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_projection_radiographs_are_accepted(modality):
    assert (
        decode_dicom(build(gradient(), Modality=modality), max_pixels=MAX_PIXELS).fields["modality"]
        == modality
    )


REJECTED = [
    ("CT", {"Modality": "CT", "SOPClassUID": CTImageStorage}, UnsupportedModality, "modality CT"),
    ("MR", {"Modality": "MR"}, UnsupportedModality, "modality MR"),
    ("US", {"Modality": "US"}, UnsupportedModality, "modality US"),
    ("mammography", {"Modality": "MG"}, UnsupportedModality, "modality MG"),
    ("other (OT)", {"Modality": "OT"}, UnsupportedModality, "modality OT"),
    ("for processing", {"PresentationIntentType": "FOR PROCESSING"}, UnsupportedModality, "for processing"),
]


@pytest.mark.parametrize(("case", "attrs", "error", "message"), REJECTED, ids=[r[0] for r in REJECTED])
def test_other_modalities_are_rejected(case, attrs, error, message):
    with pytest.raises(error, match=message):
        decode_dicom(build(gradient(), **attrs), max_pixels=MAX_PIXELS)


def test_no_pixel_data_is_unsupported():
    with pytest.raises(UnsupportedModality, match="no pixel data"):
        decode_dicom(build(None), max_pixels=MAX_PIXELS)


def test_size_is_checked_before_the_pixels_are_decoded():
    data = build(gradient(8, 8), Rows=10_000, Columns=10_000)  # pixel data far too short to decode
    with pytest.raises(InvalidImage, match="100000000 pixels"):
        decode_dicom(data, max_pixels=MAX_PIXELS)


GARBAGE = [
    ("garbage after DICM", b"\0" * 128 + b"DICM" + b"\x13\x37 not a data set \xff" * 40),
    ("empty after DICM", b"\0" * 128 + b"DICM"),
]


@pytest.mark.parametrize(("case", "data"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_is_invalid(case, data):
    with pytest.raises(InvalidImage):
        decode_dicom(data, max_pixels=MAX_PIXELS)


def test_truncation_anywhere_is_a_client_error_never_a_crash():
    data = build(gradient(24, 24), WindowCenter=2048, WindowWidth=4096)
    for cut in range(132, len(data), 3):  # boundaries between elements are complete files: 422 there
        with pytest.raises((InvalidImage, UnsupportedModality)):
            decode_dicom(data[:cut], max_pixels=MAX_PIXELS)
    inside = [data.index(b"QUIXOTE") + 3, data.index(b"PRIVATE-SECRET") + 2, len(data) - 300, len(data) - 1]
    for cut in inside:  # inside an element's value: truncated
        with pytest.raises(InvalidImage):
            decode_dicom(data[:cut], max_pixels=MAX_PIXELS)


def test_corrupted_bytes_never_escape_as_a_pydicom_exception():
    data = bytearray(build(gradient(24, 24), WindowCenter=2048, WindowWidth=4096))
    rng = random.Random(7)
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(132, len(mutated))] = rng.randrange(256)
        try:
            decode_dicom(bytes(mutated), max_pixels=MAX_PIXELS)
        except ApiError as exc:
            assert exc.status in (400, 422)


# --- de-identification -------------------------------------------------------------------------


def test_deidentified_copy_is_a_valid_dicom_without_identifiers():
    data = build(gradient(), WindowCenter=2048, WindowWidth=4096)
    decoded = decode_dicom(data, max_pixels=MAX_PIXELS)
    for secret in SECRETS:
        assert secret.encode() not in decoded.deidentified
    copy = pydicom.dcmread(io.BytesIO(decoded.deidentified))  # a Part 10 file: preamble, DICM, meta
    original = pydicom.dcmread(io.BytesIO(data))
    assert copy.PatientIdentityRemoved == "YES" and copy.DeidentificationMethod
    assert copy.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert copy.PatientName == "" and copy.PatientID == "" and copy.StudyDate == ""
    assert "InstitutionName" not in copy and "OtherPatientIDs" not in copy
    assert not any(elem.tag.is_private for elem in copy)
    for keyword, old in ORIGINAL_UIDS.items():
        assert copy[keyword].value != old and pydicom.uid.UID(copy[keyword].value).is_valid
    assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
    assert copy.SOPClassUID == DigitalXRayImageStorageForPresentation
    assert copy.PixelData == original.PixelData
    again = decode_dicom(decoded.deidentified, max_pixels=MAX_PIXELS)
    assert np.array_equal(np.asarray(again.image), np.asarray(decoded.image))


def test_deidentified_jpeg_copy_keeps_the_compressed_pixels():
    jpeg = io.BytesIO()
    Image.fromarray(gradient(top=255).astype(np.uint8)).save(jpeg, "JPEG")
    data = build(None, bits=8, syntax=JPEGBaseline8Bit, encapsulated=jpeg.getvalue())
    copy = pydicom.dcmread(io.BytesIO(decode_dicom(data, max_pixels=MAX_PIXELS).deidentified))
    assert copy.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert copy.PixelData == pydicom.dcmread(io.BytesIO(data)).PixelData


# --- through the service -----------------------------------------------------------------------


def from_sample(sample_jpeg: bytes, variant: str) -> bytes:
    """The sample radiograph as a DICOM file of the given kind."""
    v = np.asarray(Image.open(io.BytesIO(sample_jpeg)).convert("L"), dtype=np.float64)
    if variant == "8-bit":
        return build(v, bits=8)
    if variant == "12-bit MONOCHROME1":
        return build(np.rint((255 - v) * 4095 / 255), PhotometricInterpretation="MONOCHROME1")
    if variant == "16-bit rescale and window":  # stored v*200+1000; rescaled v*100+400; window 400..25900
        return build(
            v * 200 + 1000,
            bits=16,
            RescaleSlope=0.5,
            RescaleIntercept=-100,
            WindowCenter=13150,
            WindowWidth=25500,
        )
    if variant == "12-bit VOI LUT":
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 8]
        item.add_new("LUTData", "US", [255 - i // 16 for i in range(4096)])
        return build((255 - v) * 16, VOILUTSequence=Sequence([item]))
    return build(None, bits=8, syntax=JPEGBaseline8Bit, encapsulated=sample_jpeg)


VARIANTS = ["8-bit", "12-bit MONOCHROME1", "16-bit rescale and window", "12-bit VOI LUT", "JPEG baseline"]


def post(client, auth, data: bytes, raw: bool = False):
    if raw:
        return client.post(
            "/api/v1/predict", headers={**auth, "Content-Type": "application/dicom"}, data=data
        )
    return client.post("/api/v1/predict", headers=auth, data={"image": (io.BytesIO(data), "scan.dcm")})


@pytest.mark.parametrize("variant", VARIANTS)
def test_dicom_gives_the_model_the_same_input_as_png(predictor, sample_jpeg, sample_png, variant):
    png = prepare(sample_png, predictor.input_size).tensor
    diff = np.abs(prepare(from_sample(sample_jpeg, variant), predictor.input_size).tensor - png) * 255
    # Grey levels. Without a window the DICOM's own range is stretched to 0-255, and histogram
    # equalisation turns that stretch's one-level roundings into up to a dozen levels at a few pixels.
    assert diff.max() <= 12 and diff.mean() <= 2


@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "application/dicom"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_dicom_prediction_matches_the_same_image_as_png(client, auth, sample_jpeg, sample_png, variant, raw):
    png = post(client, auth, sample_png).get_json()["probabilities"]
    response = post(client, auth, from_sample(sample_jpeg, variant), raw=raw)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["image"]["format"] == "dicom" and body["image"]["uri"].endswith(".dcm")
    for label in LABELS:
        assert body["probabilities"][label] == pytest.approx(png[label], abs=TOLERANCE)


def test_no_identifier_is_stored_logged_or_answered(client, auth, sample_jpeg, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    data = from_sample(sample_jpeg, "12-bit MONOCHROME1")
    answers = [post(client, auth, data), post(client, auth, data, raw=True)]
    page = client.get("/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = client.post("/", data={"csrf_token": token, "image": (io.BytesIO(data), "QUIXOTE.dcm")})
    assert form.status_code == 303
    answers.append(client.get(form.headers["Location"]))
    assert [a.status_code for a in answers] == [200, 200, 200]
    files = [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]
    files += list(tmp_path.glob("requests.sqlite3*"))  # the database and its write-ahead log
    assert len(files) >= 2
    for secret in SECRETS:
        for path in files:
            assert secret.encode() not in path.read_bytes(), (secret, path.name)
        assert secret not in caplog.text
        for answer in answers:
            assert secret not in answer.get_data(as_text=True)


def test_stored_copy_is_the_deidentified_dicom_and_its_fields_are_logged(client, auth, sample_jpeg, tmp_path):
    body = post(client, auth, from_sample(sample_jpeg, "12-bit MONOCHROME1")).get_json()
    stored_path = Path(body["image"]["uri"].removeprefix("file://"))
    copy = pydicom.dcmread(stored_path)
    assert copy.PatientIdentityRemoved == "YES"
    assert all(copy[k].value != old for k, old in ORIGINAL_UIDS.items())
    record = SqliteRequestLog(tmp_path / "requests.sqlite3").get(body["id"])
    assert record.dicom == {"modality": "DX", "view_position": "PA", "bits_stored": 12}


def test_lateral_view_warning_is_in_the_response(client, auth):
    body = post(client, auth, build(gradient(), ViewPosition="LL"), raw=True).get_json()
    assert LATERAL_WARNING in body["warnings"]


API_REJECTED = [
    ("CT", build(gradient(), Modality="CT", SOPClassUID=CTImageStorage), 422, "unsupported_modality"),
    ("no pixel data", build(None), 422, "unsupported_modality"),
    ("garbage after DICM", GARBAGE[0][1], 400, "invalid_image"),
    ("truncated", build(gradient())[:-500], 400, "invalid_image"),
]


@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "application/dicom"])
@pytest.mark.parametrize(("case", "data", "status", "code"), API_REJECTED, ids=[r[0] for r in API_REJECTED])
def test_rejected_dicom_gets_its_4xx_and_stores_nothing(client, auth, stored, case, data, status, code, raw):
    response = post(client, auth, data, raw=raw)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert stored() == (0, 0)
