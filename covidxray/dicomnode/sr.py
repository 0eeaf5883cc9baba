"""The result as a DICOM Comprehensive SR: a TID 1500 measurement report built with highdicom.

One `MeasurementsAndQualitativeEvaluations` group references the source image and carries the
algorithm (model name and version), the finding as a qualitative evaluation and the three
probabilities as measurements. The SR joins the source image's study (and patient) in a new series.
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from covidxray.backends.requestlog import PredictionRecord
from covidxray.dicomnode import codes as ours
from covidxray.labels import LABELS, UNCERTAIN

MANUFACTURER = "covidxray"
NOTICE = "NOT FOR DIAGNOSIS: a research model's output; a radiologist reads the study"
SR_SERIES_NUMBER = 9901
_TITLE = CodedConcept("126000", "DCM", "Imaging Measurement Report")
_COMMENT = CodedConcept("121106", "DCM", "Comment")


def build_sr(source: Dataset, record: PredictionRecord, device_uid: str) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of one prediction about `source` (which keeps its identifiers)."""
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(record, device_uid),
        procedure_reported=ours.PROCEDURE,
        imaging_measurements=[_group(source, record)],
        title=_TITLE,
    )
    _add_notice(report)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="covidxray result (not for diagnosis)",
        manufacturer_model_name=record.model_name,
        software_versions=record.model_version,
    )
    sr.CodingSchemeIdentificationSequence = [_private_scheme()]
    return sr


def _private_scheme() -> Dataset:
    """Declares our own coding scheme (PS3.3 C.12.1.1.4), used where SNOMED CT has no concept."""
    item = Dataset()
    item.CodingSchemeDesignator = ours.SCHEME
    item.CodingSchemeName = "covidxray result codes"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def _observation_context(record: PredictionRecord, device_uid: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid,
        name="covidxray",
        manufacturer_name=MANUFACTURER,
        model_name=f"{record.model_name} {record.model_version}"[:64],
    )
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    return hd.sr.ObservationContext(observer_device_context=observer)


def _group(source: Dataset, record: PredictionRecord) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = hd.sr.AlgorithmIdentification(name=record.model_name, version=record.model_version)
    finding = ours.FINDINGS[record.predicted_class or UNCERTAIN]
    probabilities = record.probabilities or {}
    measurements = [
        hd.sr.Measurement(
            name=ours.concept(ours.PROBABILITIES[label]),
            value=round(float(probabilities[label]), 6),
            unit=ours.NO_UNITS,
            algorithm_id=algorithm,
        )
        for label in LABELS
        if label in probabilities
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"covidxray {record.id}"),
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=ours.FINDING, value=ours.concept(finding))],
        measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def _add_notice(report: hd.sr.MeasurementReport) -> None:
    """The 'not for diagnosis' statement, as a TEXT comment under the report's root."""
    comment = hd.sr.TextContentItem(
        name=_COMMENT, value=NOTICE, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    report[0].ContentSequence.append(comment)
