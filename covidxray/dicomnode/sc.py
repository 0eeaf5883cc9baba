"""The result as a secondary capture: the class activation map over the image, the top class and the
notice burnt into a margin below it (never over the lungs), built with highdicom's SCImage.

highdicom does not reference the source image itself, so the `SourceImageSequence` is added here.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from covidxray.backends.requestlog import PredictionRecord
from covidxray.dicomnode.sr import MANUFACTURER, NOTICE
from covidxray.labels import LABELS, UNCERTAIN

SC_SERIES_NUMBER = 9902
_BIPED = frozenset("APLRHF")
_DEFAULT_ORIENTATION = ("L", "F")  # a frontal film as displayed: rows to the patient's left, columns down


def caption(record: PredictionRecord) -> list[str]:
    """The lines burnt into the margin: the model, the top class and the notice."""
    probabilities = record.probabilities or {}
    shares = "  ".join(f"{label} {probabilities.get(label, 0.0):.0%}" for label in LABELS)
    top = (record.predicted_class or UNCERTAIN).upper()
    return [f"covidxray {record.model_name} {record.model_version}: {top}", shares, NOTICE]


def with_margin(picture: Image.Image, lines: list[str]) -> np.ndarray:
    """The RGB picture above a black margin holding `lines` in white; (h, w, 3) uint8."""
    width = picture.width
    size = max(10, width // 40)
    font = ImageFont.load_default(size=size)
    while size > 8 and max(font.getlength(line) for line in lines) > width - size:
        size -= 1
        font = ImageFont.load_default(size=size)
    margin = (len(lines) + 1) * round(size * 1.4)
    canvas = Image.new("RGB", (width, picture.height + margin), "black")
    canvas.paste(picture.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, line in enumerate(lines):
        draw.text((size // 2, picture.height + size // 2 + row * round(size * 1.4)), line, "white", font)
    return np.asarray(canvas, dtype=np.uint8)


def build_sc(source: Dataset, record: PredictionRecord, picture: Image.Image) -> Dataset:
    """The secondary capture of one prediction about `source` (which keeps its identifiers).

    `picture`: the class activation map drawn over the image (or the image alone, when the
    backend gives no map).
    """
    pixels = with_margin(picture, caption(record))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=_orientation(source),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.SeriesDescription = "covidxray heatmap (not for diagnosis)"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BodyPartExamined = "CHEST"  # an unpaired part: GeneralSeries then needs no Laterality
    sc.BurnedInAnnotation = "YES"  # the caption, and whatever the source had burnt in
    sc.ImageComments = NOTICE
    sc.SourceImageSequence = Sequence([_reference(source)])
    return sc


def _reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return item


def _orientation(source: Dataset) -> tuple[str, str]:
    """The source's patient orientation when it is two plain biped letters, else a frontal film's."""
    values = [str(v).upper() for v in (source.get("PatientOrientation") or [])]
    if len(values) == 2 and all(v in _BIPED for v in values):
        return values[0], values[1]
    return _DEFAULT_ORIENTATION
