"""The coded concepts of our results, shared by the DICOM SR and the FHIR DiagnosticReport.

SNOMED CT where a concept exists; our own coding scheme (`99COVIDXRAY`, private per PS3.16 8.2)
otherwise. The FHIR report's code is LOINC 36554-4 "XR Chest Single view".
"""

from __future__ import annotations

from highdicom.sr import CodedConcept

from covidxray.labels import LABELS, UNCERTAIN

SCHEME = "99COVIDXRAY"
SNOMED_URI = "http://snomed.info/sct"
LOINC_URI = "http://loinc.org"
LOCAL_URI = "urn:covidxray:codes"  # FHIR system of our own codes

#: the study the report is about (LOINC), for FHIR
STUDY_LOINC = ("36554-4", "XR Chest Single view")
#: the procedure reported in the SR (SNOMED CT 399208008 |Plain chest X-ray|)
PROCEDURE = CodedConcept("399208008", "SCT", "Plain chest X-ray")
#: the concept name of the finding (DCM 121071 "Finding")
FINDING = CodedConcept("121071", "DCM", "Finding")
#: the unit of a probability (UCUM "1")
NO_UNITS = CodedConcept("1", "UCUM", "no units")

#: predicted class -> (scheme, code, meaning)
FINDINGS: dict[str, tuple[str, str, str]] = {
    "covid": ("SCT", "840539006", "COVID-19"),
    "pneumonia": ("SCT", "233604007", "Pneumonia"),
    "normal": ("SCT", "17621005", "Normal"),
    UNCERTAIN: (SCHEME, "uncertain", "Uncertain: no class reached the threshold"),
}
#: class -> (scheme, code, meaning) of its probability
PROBABILITIES: dict[str, tuple[str, str, str]] = {
    label: (SCHEME, f"p-{label}", f"Probability of {label}") for label in LABELS
}
FHIR_SYSTEMS = {"SCT": SNOMED_URI, SCHEME: LOCAL_URI}


def concept(entry: tuple[str, str, str]) -> CodedConcept:
    """A (scheme, code, meaning) entry as a highdicom coded concept."""
    scheme, code, meaning = entry
    return CodedConcept(code, scheme, meaning)


def coding(entry: tuple[str, str, str]) -> dict[str, str]:
    """A (scheme, code, meaning) entry as a FHIR Coding."""
    scheme, code, meaning = entry
    return {"system": FHIR_SYSTEMS[scheme], "code": code, "display": meaning}
