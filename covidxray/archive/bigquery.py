"""The archive's results in BigQuery (`--bigquery PROJECT.DATASET.TABLE`): one row per image and model.

Beam's own BigQuery sink cannot give that: its streaming inserts draw a new random insertId on every run
(BigQuery's de-duplication by insertId is best-effort and lasts minutes), and its file loads append. So the
lines, once per key after the pipeline's de-duplication, are written in batches by a DoFn that first asks
which of the batch's `record_key`s the table already holds and inserts only the others, each with its
`record_key` as insertId (so a retried bundle is de-duplicated too). BIGQUERY_EMULATOR_HOST points the
client at a local server, as for the service's request log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from google.cloud import bigquery

from covidxray.archive.handler import NAMESPACE
from covidxray.archive.records import record_key
from covidxray.backends.bigquery import make_client
from covidxray.labels import LABELS

SCHEMA = [
    bigquery.SchemaField("record_key", "STRING", mode="REQUIRED", description="sha256|model version"),
    bigquery.SchemaField("path", "STRING"),
    bigquery.SchemaField("sha256", "STRING"),
    bigquery.SchemaField("predicted_class", "STRING"),
    bigquery.SchemaField("score", "FLOAT"),
    *(bigquery.SchemaField(f"p_{label}", "FLOAT") for label in LABELS),
    bigquery.SchemaField("model_name", "STRING"),
    bigquery.SchemaField("model_version", "STRING"),
    bigquery.SchemaField("format", "STRING"),
    bigquery.SchemaField("ood_score", "FLOAT"),
    bigquery.SchemaField("warnings", "STRING", description="JSON list"),
]


def table_row(line: dict[str, Any]) -> dict[str, Any]:
    """A result line as a row of SCHEMA."""
    return {
        "record_key": record_key(line),
        "path": line["path"],
        "sha256": line["sha256"],
        "predicted_class": line["predicted_class"],
        "score": line["score"],
        **{f"p_{label}": line["probabilities"].get(label) for label in LABELS},
        "model_name": line["model"]["name"],
        "model_version": line["model"]["version"],
        "format": line["image"]["format"],
        "ood_score": line["ood_score"],
        "warnings": json.dumps(line["warnings"], ensure_ascii=False),
    }


def ensure_table(table_id: str) -> None:
    """Create the dataset and the table if missing (on the launcher, before any worker writes)."""
    project, dataset, _ = _parts(table_id)
    client = make_client(project)
    client.create_dataset(f"{project}.{dataset}", exists_ok=True)
    client.create_table(bigquery.Table(table_id, schema=SCHEMA), exists_ok=True)


def _parts(table_id: str) -> tuple[str, str, str]:
    parts = table_id.split(".")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"a BigQuery table is PROJECT.DATASET.TABLE, not {table_id!r}")
    return parts[0], parts[1], parts[2]


class InsertNewRows(beam.DoFn):  # type: ignore[misc]
    """Inserts the rows of a batch of result lines whose record_key the table does not hold yet."""

    def __init__(self, table_id: str):
        self.table_id = table_id
        self.written = Metrics.counter(NAMESPACE, "bigquery_rows_written")

    def setup(self) -> None:
        self.client = make_client(_parts(self.table_id)[0])

    def process(self, batch: list[dict[str, Any]]) -> Iterator[int]:
        rows = {record_key(line): table_row(line) for line in batch}
        held = self.client.query(
            f"SELECT * FROM `{self.table_id}` WHERE record_key IN UNNEST(@keys)",
            job_config=bigquery.QueryJobConfig(
                query_parameters=[bigquery.ArrayQueryParameter("keys", "STRING", sorted(rows))]
            ),
        ).result()
        new = sorted(set(rows) - {row["record_key"] for row in held})
        if new:
            errors = self.client.insert_rows_json(self.table_id, [rows[k] for k in new], row_ids=new)
            if errors:  # the bundle fails and is retried; the insertIds keep its rows single
                raise RuntimeError(f"BigQuery refused rows of {self.table_id}: {errors[:3]}")
            self.written.inc(len(new))
        yield len(new)


class WriteNewRows(beam.PTransform):  # type: ignore[misc]
    """Result lines (once per key) → rows of `table_id` that it did not hold."""

    def __init__(self, table_id: str, batch_size: int = 500):
        super().__init__()
        self.table_id, self.batch_size = table_id, batch_size

    def expand(self, lines: beam.PCollection) -> beam.PCollection:
        return (
            lines
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "Insert new" >> beam.ParDo(InsertNewRows(self.table_id))
        )
