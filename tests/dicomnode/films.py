"""Test radiographs as DICOM datasets, with the patient identifiers a PACS would send."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
CR = "1.2.840.10008.5.1.4.1.1.1"
PATIENT = {"PatientName": "DOE^JANE", "PatientID": "MRN-4711", "PatientBirthDate": "19700101"}


def sample_pixels(size: int = 256, index: int = 0) -> np.ndarray:
    """A licensed sample radiograph as 16-bit pixels (12 bits stored), `size` on its long side."""
    path = sorted(SAMPLES.glob("*.jpg"))[index]
    image = Image.open(path).convert("L")
    image.thumbnail((size, size))
    return np.asarray(image, dtype=np.uint16) * 16


def cr_dataset(pixels: np.ndarray | None = None, study_uid: str | None = None, **attrs: object) -> Dataset:
    """A CR image (MONOCHROME2, 12 bits) of the first sample, with a patient and study."""
    pixels = sample_pixels() if pixels is None else pixels
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CR, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CR, ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "F", "20261203", "101500", "ACC1"
    ds.StudyID, ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "1", "", 1, 1
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CR", "CHEST", "PA", ["L", "F"]
    ds.Manufacturer, ds.ImagerPixelSpacing = "test", [0.2, 0.2]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    """A dataset as a DICOM file."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
