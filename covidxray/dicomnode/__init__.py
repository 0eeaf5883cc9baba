"""The hospital node: the DIMSE listener, DICOMweb STOW-RS, results back as DICOM SR and secondary
capture through a durable outbox, and FHIR DiagnosticReports.

Sits above the use case (like `web`, which may import it): may import service, imaging,
predictors, backends and base.
"""
