"""DICOM radiographs: modality checks, display rendering and the de-identified copy that is stored.

Accepted: Modality CR or DX (a projection radiograph), including secondary captures that keep
that modality; a DX "for processing" image (raw detector data) and every other modality (CT,
MR, US, MG, IO, PX, RF, XA, OT, ...) or a file without pixel data → 422. A multi-frame file is
read from its first frame, with a warning.

The stored copy applies the DICOM PS3.15 Annex E Basic Application Level Confidentiality
Profile as an allowlist: only the attributes in `_KEEP` (image pixel description, LUTs and
view; none of them listed in Table E.1-1) are copied, so every attribute the table lists is
removed (X/D), the type 2 ones are emptied (Z), the study/series/instance UIDs are new (U),
private attributes are removed and the preamble is zeroed. Pixel data are copied unchanged,
so text burned into the pixels stays (the Clean Pixel Data option is not applied).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing, pixel_array
from pydicom.sequence import Sequence
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from covidxray.errors import ApiError, InvalidImage, UnsupportedModality

log = logging.getLogger(__name__)

#: Modality values of a projection radiograph; MG, IO/PX (dental), RF/XA and OT are not chest films.
ACCEPTED_MODALITIES = frozenset({"CR", "DX"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT"})
LATERAL_WARNING = "DICOM view position is lateral; the model expects a frontal (PA/AP) film"
DEIDENTIFICATION_METHOD = "PS3.15 E.1 basic profile (allowlist), covidxray"
_BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")  # PS3.16 CID 7050
_KEEP = frozenset(
    {
        # SOP common, series and view (the UIDs are replaced, not copied)
        "SpecificCharacterSet", "SOPClassUID", "ImageType", "Modality", "ConversionType",
        "PresentationIntentType", "ViewPosition", "PatientOrientation", "Laterality", "ImageLaterality",
        "Manufacturer", "ManufacturerModelName", "SeriesNumber", "InstanceNumber", "BurnedInAnnotation",
        "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
        # image pixel module
        "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames",
        "Rows", "Columns", "PixelSpacing", "ImagerPixelSpacing", "PixelAspectRatio", "BitsAllocated",
        "BitsStored", "HighBit", "PixelRepresentation", "SmallestImagePixelValue",
        "LargestImagePixelValue", "PixelPaddingValue", "PixelPaddingRangeLimit",
        "PixelIntensityRelationship", "PixelIntensityRelationshipSign",
        "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
        "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
        "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
        "PixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
        # modality LUT, VOI LUT and presentation LUT (sequence items keep only descriptor and data)
        "RescaleIntercept", "RescaleSlope", "RescaleType", "ModalityLUTSequence", "ModalityLUTType",
        "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence", "LUTDescriptor", "LUTData",
        "PresentationLUTShape",
    }
)  # fmt: skip
#: Type 2 attributes that Table E.1-1 empties (action Z) rather than removes.
_EMPTIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ContentDate", "ContentTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip


@dataclass
class DecodedDicom:
    """A DICOM radiograph rendered for the model, its non-identifying fields and its stored copy."""

    image: Image.Image  # 8-bit grayscale ("L"), display-ready (LUTs/window applied, MONOCHROME1 inverted)
    fields: dict[str, Any]  # {"modality": "DX", "view_position": "PA" or None, "bits_stored": 12}
    deidentified: bytes  # the de-identified DICOM file (still a valid DICOM, pixel data unchanged)
    warnings: list[str] = field(default_factory=list)


def decode_dicom(data: bytes, max_pixels: int) -> DecodedDicom:
    """Check, render and de-identify a DICOM file; InvalidImage (400) or UnsupportedModality (422)."""
    try:
        with warnings.catch_warnings(record=True) as caught:  # kept off stderr; only read for EOF notes
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data))
            if not ds.file_meta.get("TransferSyntaxUID") or _truncated(ds, len(data), caught):
                raise InvalidImage("the DICOM file is truncated or has no file meta information")
            return _decode(ds, max_pixels)
    except ApiError:
        raise
    except Exception as exc:  # pydicom and its decoders raise many types; input never makes a 500
        log.info("dicom unreadable", extra={"error": type(exc).__name__})
        raise InvalidImage("the DICOM file is truncated or corrupt and could not be decoded") from exc


def _truncated(ds: Dataset, size: int, caught: list[warnings.WarningMessage]) -> bool:
    """True when the data end inside an element (pydicom only warns, or reads it short) or hold none."""
    if not len(ds) or any("end of file" in str(w.message).lower() for w in caught):
        return True
    last = ds.get_item(max(ds.keys()))
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:
        return False  # a sequence or an undefined length: pydicom warns when the delimiter is missing
    return ds.file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian and (
        last.value_tell + last.length != size  # a short value, or a partial header pydicom skipped
    )


def _decode(ds: Dataset, max_pixels: int) -> DecodedDicom:
    """Reject what is not a usable CR/DX radiograph, then render and de-identify it."""
    modality = str(ds.get("Modality") or "").strip().upper()[:16]
    if modality not in ACCEPTED_MODALITIES:
        log.info("dicom rejected", extra={"reason": "modality", "modality": modality})
        raise UnsupportedModality(
            f"DICOM modality {modality or '(none)'} is not accepted; only CR and DX radiographs are"
        )
    if str(ds.get("PresentationIntentType") or "").upper() == "FOR PROCESSING":
        raise UnsupportedModality(
            "a DX image 'for processing' is raw detector data; send the one for presentation"
        )
    if "PixelData" not in ds:
        log.info("dicom rejected", extra={"reason": "no_pixel_data", "modality": modality})
        raise UnsupportedModality("the DICOM file has no pixel data")
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows * columns > max_pixels:
        raise InvalidImage(f"the image has {rows * columns} pixels; at most {max_pixels} are accepted")
    notes = []
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        notes.append(f"DICOM has {frames} frames; only the first was used")
    view = str(ds.get("ViewPosition") or "").strip().upper()[:16] or None
    if view in LATERAL_VIEWS:
        notes.append(LATERAL_WARNING)
    bits = ds.get("BitsStored")
    image = _render(pixel_array(ds, index=0), ds)
    fields = {"modality": modality, "view_position": view, "bits_stored": int(bits) if bits else None}
    fields["study_uid"] = str(ds.get("StudyInstanceUID") or "")[:64] or None  # kept only for PACS inputs
    return DecodedDicom(image=image, fields=fields, deidentified=deidentify(ds), warnings=notes)


def _render(arr: np.ndarray, ds: Dataset) -> Image.Image:
    """Apply the Modality LUT, the VOI LUT or window and MONOCHROME1 inversion; scale to 8 bits."""
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:  # RGB (pixel_array converts YBR): luminance over the full sample range
        values = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        lo, hi = 0.0, 255.0 if arr.dtype.itemsize == 1 else 65535.0
    else:
        little = UID(ds.file_meta.TransferSyntaxUID).is_little_endian
        modality_lut = (ds.get("ModalityLUTSequence") or [None])[0]
        values = _lookup(arr, modality_lut, little)[0] if modality_lut else apply_modality_lut(arr, ds)
        voi_lut = (ds.get("VOILUTSequence") or [None])[0]
        if voi_lut is not None and "LUTData" in voi_lut:  # the VOI LUT wins over the window
            values, table = _lookup(values, voi_lut, little)
            lo, hi = float(table.min()), float(table.max())  # the range used, not the declared depth
        elif ds.get("WindowCenter") is not None and _first(ds.get("WindowWidth")) >= 1:
            lo, hi = (float(v) for v in apply_windowing(np.array([-1e12, 1e12]), ds))  # its output range
            values = apply_windowing(values, ds)
        else:  # no usable VOI: the full range, as for a 16-bit PNG
            lo, hi = float(values.min()), float(values.max())
    values = np.asarray(values, dtype=np.float64)
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape") or "").upper() == "INVERSE":
        scaled = 1.0 - scaled
    return Image.fromarray(np.rint(scaled * 255.0).astype(np.uint8))


def _first(value: Any) -> float:
    """The first of a numeric attribute's values (0 when absent): window values may be multi-valued."""
    value = value[0] if isinstance(value, MultiValue) and len(value) else value
    return float(value) if isinstance(value, int | float | str) and value != "" else 0.0


def _lookup(values: np.ndarray, item: Dataset, little: bool) -> tuple[np.ndarray, np.ndarray]:
    """Values mapped through a LUT item (PS3.3 C.11.1.1.1, C.11.2.1.1), clamped to its ends; and the LUT."""
    # Not pydicom's: 3.0's apply_voi indexes an 8-bit LUT through uint8 (wrong past 256 entries)
    # and its apply_modality_lut rejects 12-bit entries.
    entries, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
    data = item.LUTData
    table = np.frombuffer(data, "<u2" if little else ">u2") if isinstance(data, bytes) else np.asarray(data)
    table = np.atleast_1d(table).astype(np.float64)
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, min(entries, table.size) - 1)
    return table[index], table


def deidentify(ds: Dataset) -> bytes:
    """The de-identified copy of `ds` as a DICOM file (basic profile by allowlist, new UIDs)."""
    out = _copy(ds)
    for keyword in _EMPTIED:
        setattr(out, keyword, "")
    out.SOPClassUID = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    out.SOPClassUID = out.SOPClassUID or SecondaryCaptureImageStorage
    out.StudyInstanceUID, out.SeriesInstanceUID, out.SOPInstanceUID = (generate_uid() for _ in range(3))
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _BASIC_PROFILE_CODE
    out.DeidentificationMethodCodeSequence = Sequence([code])
    out.LongitudinalTemporalInformationModified = "REMOVED"
    out.file_meta = FileMetaDataset()
    out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _copy(src: Dataset) -> Dataset:
    """Copy the allowlisted attributes of `src`, recursing into sequences; never a private one."""
    out = Dataset()
    for tag in src.keys():  # noqa: SIM118 (iterating a Dataset decodes every value, identifiers too)
        if tag.is_private or keyword_for_tag(tag) not in _KEEP:
            continue
        elem = src[tag]
        if elem.VR == "SQ":
            out.add_new(tag, "SQ", Sequence([_copy(item) for item in elem.value]))
        else:
            out.add(elem)
    return out
