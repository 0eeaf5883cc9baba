"""The BigQuery tables' columns, the de-duplicating view, and a record's row in them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.cloud.bigquery import SchemaField

from covidxray.backends.requestlog import CLINICAL_FIELDS, DICOM_FIELDS, PredictionRecord
from covidxray.labels import LABELS

_S, _I, _F = "STRING", "INTEGER", "FLOAT"
_REQUIRED = {"id": _S, "created_at": "TIMESTAMP", "backend": _S, "model_name": _S, "model_version": _S}
_REQUIRED |= {"status": _S, "image_uri": _S, "sha256": _S, "format": _S, "size_bytes": _I, "width": _I}
_REQUIRED |= {"height": _I, "latency_ms": _F}
_NULLABLE = {"subject": "STRING", "predicted_class": "STRING", "score": "FLOAT"}
_NULLABLE |= {"ood_score": "FLOAT", "ood_threshold": "FLOAT"}
_TYPES = {
    "sex": "STRING",
    "modality": "STRING",
    "view_position": "STRING",
    "study_uid": "STRING",
}  # other clinical/DICOM: INTEGER
SCHEMA = [
    *(SchemaField(name, kind, mode="REQUIRED") for name, kind in _REQUIRED.items()),
    *(SchemaField(name, kind) for name, kind in _NULLABLE.items()),
    SchemaField("probabilities", "RECORD", fields=[SchemaField(label, "FLOAT") for label in LABELS]),
    SchemaField("warnings", "STRING", mode="REPEATED"),
    *(SchemaField(name, _TYPES.get(name, "INTEGER")) for name in (*CLINICAL_FIELDS, *DICOM_FIELDS)),
    SchemaField("heatmap_uri", "STRING"),
    SchemaField("source", "STRING"),
]
AUDIT_SCHEMA = [
    SchemaField("at", "TIMESTAMP", mode="REQUIRED"),
    *(SchemaField(name, "STRING", mode="REQUIRED") for name in ("actor", "action", "detail")),
]
# One row per id. Retried inserts repeat the same created_at, so partitioning the window by it too
# keeps one row per id and lets a filter on created_at prune partitions through the view.
VIEW_SQL = (
    "SELECT * EXCEPT (_n) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY id, created_at) AS _n "
    "FROM `{table}`) WHERE _n = 1"
)


def to_row(rec: PredictionRecord) -> dict[str, Any]:
    """The JSON row of a record."""
    row: dict[str, Any] = {field.name: getattr(rec, field.name, None) for field in SCHEMA}
    row["probabilities"] = rec.probabilities
    row.update({name: rec.clinical.get(name) for name in CLINICAL_FIELDS})
    row.update({name: rec.dicom.get(name) for name in DICOM_FIELDS})
    return row


def from_row(row: Any) -> PredictionRecord:
    """A record from a query row."""
    data = dict(row.items())
    plain = {name: data[name] for name in (*_REQUIRED, *_NULLABLE)}
    plain["created_at"] = format_time(data["created_at"])
    probs = {k: v for k, v in (data.get("probabilities") or {}).items() if v is not None}
    return PredictionRecord(
        **plain,
        heatmap_uri=data.get("heatmap_uri"),
        source=data.get("source") or "upload",
        probabilities=probs or None,
        warnings=list(data.get("warnings") or []),
        clinical={name: data[name] for name in CLINICAL_FIELDS if data.get(name) is not None},
        dicom={name: data[name] for name in DICOM_FIELDS if data.get(name) is not None},
    )


def format_time(at: datetime) -> str:
    """A UTC timestamp as the text a record holds."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """A record's timestamp text as an aware datetime (UTC when it names no zone)."""
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)
