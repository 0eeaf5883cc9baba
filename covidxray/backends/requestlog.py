"""Request logs: one record per accepted prediction request."""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CLINICAL_FIELDS = (
    "age",
    "sex",
    "symptom_days",
    "trouble_breathing",
    "chest_pain",
    "tiredness",
    "bluish_color",
    "runny_nose",
    "cough",
    "fever",
)


@dataclass
class PredictionRecord:
    """What is kept about one request: no file names, no direct identifiers."""

    id: str
    created_at: str
    backend: str
    model_name: str
    model_version: str
    status: str  # "ok" or an error code such as "backend_unavailable"
    image_uri: str
    sha256: str
    format: str
    size_bytes: int
    width: int
    height: int
    latency_ms: float
    subject: str | None = None
    predicted_class: str | None = None
    score: float | None = None
    probabilities: dict[str, float] | None = None
    warnings: list[str] = field(default_factory=list)
    clinical: dict[str, Any] = field(default_factory=dict)
    dicom: dict[str, Any] = field(default_factory=dict)  # modality, view_position, bits_stored, study_uid
    heatmap_uri: str | None = None
    ood_score: float | None = None  # the gate's score (higher: less like a frontal chest film)
    ood_threshold: float | None = None  # the gate's threshold when it judged
    source: str = "upload"  # how the image came: upload (form, API), dicom (DIMSE), stow (STOW-RS)


class RequestLog(ABC):
    """Append-only log of prediction requests, readable and erasable by id."""

    @abstractmethod
    def record(self, rec: PredictionRecord) -> None:
        """Write one record."""

    @abstractmethod
    def get(self, request_id: str) -> PredictionRecord | None:
        """Return the record with `request_id`, if any."""

    @abstractmethod
    def delete(self, request_id: str) -> None:
        """Erase the record with `request_id`."""

    @abstractmethod
    def count_image(self, uri: str) -> int:
        """How many records refer to the image (or heatmap) at `uri`."""

    @abstractmethod
    def search(self, query: HistoryQuery) -> list[PredictionRecord]:
        """Records matching `query`, newest first."""

    @abstractmethod
    def audit(self, actor: str, action: str, detail: str) -> None:
        """Append an entry to the audit log (who looked at or exported what)."""


@dataclass(frozen=True)
class HistoryQuery:
    """A filter over the log: predicted class and a half-open time range [since, until)."""

    predicted_class: str | None = None
    since: str | None = None  # ISO 8601, compared as text (all times are UTC with a Z)
    until: str | None = None
    limit: int = 100


_MIGRATIONS: list[str] = [
    """
    CREATE TABLE predictions (
        id TEXT PRIMARY KEY, created_at TEXT NOT NULL, backend TEXT NOT NULL,
        model_name TEXT NOT NULL, model_version TEXT NOT NULL, status TEXT NOT NULL,
        image_uri TEXT NOT NULL, sha256 TEXT NOT NULL, format TEXT NOT NULL,
        size_bytes INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
        latency_ms REAL NOT NULL, subject TEXT, predicted_class TEXT, score REAL,
        prob_covid REAL, prob_pneumonia REAL, prob_normal REAL, warnings TEXT NOT NULL,
        age INTEGER, sex TEXT, symptom_days INTEGER, trouble_breathing INTEGER, chest_pain INTEGER,
        tiredness INTEGER, bluish_color INTEGER, runny_nose INTEGER, cough INTEGER, fever INTEGER
    );
    CREATE INDEX predictions_created_at ON predictions (created_at);
    CREATE INDEX predictions_image_uri ON predictions (image_uri);
    """,
    """
    ALTER TABLE predictions ADD COLUMN modality TEXT;
    ALTER TABLE predictions ADD COLUMN view_position TEXT;
    ALTER TABLE predictions ADD COLUMN bits_stored INTEGER;
    """,
    """
    ALTER TABLE predictions ADD COLUMN heatmap_uri TEXT;
    CREATE INDEX predictions_heatmap_uri ON predictions (heatmap_uri);
    """,
    """
    CREATE TABLE audit (at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);
    """,
    """
    ALTER TABLE predictions ADD COLUMN ood_score REAL;
    ALTER TABLE predictions ADD COLUMN ood_threshold REAL;
    """,
    """
    ALTER TABLE predictions ADD COLUMN source TEXT NOT NULL DEFAULT 'upload';
    ALTER TABLE predictions ADD COLUMN study_uid TEXT;
    """,
]
DICOM_FIELDS = ("modality", "view_position", "bits_stored", "study_uid")
_LABEL_COLUMNS = {"prob_covid": "covid", "prob_pneumonia": "pneumonia", "prob_normal": "normal"}
_PLAIN = [
    f.name
    for f in fields(PredictionRecord)
    if f.name not in ("probabilities", "warnings", "clinical", "dicom")
]


class SqliteRequestLog(RequestLog):
    """SQLite in WAL mode, safe for several gunicorn workers; schema versioned by user_version."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._migrate()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _migrate(self) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def record(self, rec: PredictionRecord) -> None:
        row: dict[str, Any] = {name: getattr(rec, name) for name in _PLAIN}
        probs = rec.probabilities or {}
        row.update({col: probs.get(label) for col, label in _LABEL_COLUMNS.items()})
        row["warnings"] = json.dumps(rec.warnings)
        row.update({name: rec.clinical.get(name) for name in CLINICAL_FIELDS})
        row.update({name: rec.dicom.get(name) for name in DICOM_FIELDS})
        columns = ", ".join(row)
        marks = ", ".join(f":{name}" for name in row)
        self._conn().execute(f"INSERT INTO predictions ({columns}) VALUES ({marks})", row)

    def get(self, request_id: str) -> PredictionRecord | None:
        row = self._conn().execute("SELECT * FROM predictions WHERE id = ?", (request_id,)).fetchone()
        return None if row is None else _from_row(row)

    def delete(self, request_id: str) -> None:
        self._conn().execute("DELETE FROM predictions WHERE id = ?", (request_id,))

    def count_image(self, uri: str) -> int:
        return int(
            self._conn()
            .execute("SELECT COUNT(*) FROM predictions WHERE image_uri = ? OR heatmap_uri = ?", (uri, uri))
            .fetchone()[0]
        )

    def search(self, query: HistoryQuery) -> list[PredictionRecord]:
        clauses, params = ["1 = 1"], []
        for clause, value in (
            ("predicted_class = ?", query.predicted_class),
            ("created_at >= ?", query.since),
            ("created_at < ?", query.until),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        sql = f"SELECT * FROM predictions WHERE {' AND '.join(clauses)} ORDER BY created_at DESC LIMIT ?"
        return [_from_row(row) for row in self._conn().execute(sql, (*params, query.limit))]

    def audit(self, actor: str, action: str, detail: str) -> None:
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._conn().execute("INSERT INTO audit VALUES (?, ?, ?, ?)", (at, actor, action, detail))

    def audit_entries(self) -> list[tuple[str, str, str, str]]:
        """The audit log, oldest first."""
        return [tuple(row) for row in self._conn().execute("SELECT * FROM audit ORDER BY at")]

    def count(self) -> int:
        """Number of records (for tests and the history page)."""
        return int(self._conn().execute("SELECT COUNT(*) FROM predictions").fetchone()[0])


def _from_row(row: sqlite3.Row) -> PredictionRecord:
    data = {name: row[name] for name in _PLAIN}
    probs = {label: row[col] for col, label in _LABEL_COLUMNS.items() if row[col] is not None}
    clinical = {name: row[name] for name in CLINICAL_FIELDS if row[name] is not None}
    dicom = {name: row[name] for name in DICOM_FIELDS if row[name] is not None}
    return PredictionRecord(
        **data,
        probabilities=probs or None,
        warnings=json.loads(row["warnings"]),
        clinical=clinical,
        dicom=dicom,
    )
