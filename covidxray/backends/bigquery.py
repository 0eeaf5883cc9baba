"""BigQuery request log: streaming inserts into a day-partitioned table, de-duplicated by a view."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import requests
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from google.cloud.bigquery import ArrayQueryParameter, ScalarQueryParameter, SchemaField
from google.cloud.bigquery.retry import DEFAULT_RETRY

from covidxray.backends.bigquery_schema import (
    AUDIT_SCHEMA,
    SCHEMA,
    VIEW_SQL,
    format_time,
    from_row,
    parse_time,
    to_row,
)
from covidxray.backends.requestlog import HistoryQuery, PredictionRecord, RequestLog
from covidxray.errors import BackendUnavailable

log = logging.getLogger(__name__)

TIMEOUT = 30.0
READ_RETRY = DEFAULT_RETRY.with_timeout(10.0)  # user-facing reads; writes are retried by the outbox
NO_RETRY = Retry(predicate=lambda _exc: False)
TRANSIENT = (
    gexc.RetryError,
    gexc.ServerError,
    gexc.TooManyRequests,
    requests.ConnectionError,
    requests.Timeout,
)
_WINDOW = "created_at >= @low AND created_at < @high"
SKEW = timedelta(minutes=1)  # created_at is taken right after the id: look this far on either side


class InsertFailed(RuntimeError):
    """BigQuery refused some rows of a streaming insert."""


def parse_uri(uri: str) -> tuple[str, str, str]:
    """`bigquery://project/dataset/table` as (project, dataset, table)."""
    parsed = urlparse(uri)
    parts = parsed.path.strip("/").split("/")
    if parsed.scheme != "bigquery" or not parsed.netloc or len(parts) != 2 or not all(parts):
        raise ValueError("a BigQuery request log looks like bigquery://project/dataset/table")
    return parsed.netloc, parts[0], parts[1]


def make_client(project: str) -> bigquery.Client:
    """A client of `project`; with BIGQUERY_EMULATOR_HOST, one of that local server without credentials."""
    host = os.environ.get("BIGQUERY_EMULATOR_HOST")
    if host:
        return bigquery.Client(
            project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": host}
        )
    return bigquery.Client(project=project)


def id_window(request_id: str) -> tuple[datetime, datetime]:
    """The day partition(s) around the time in a UUIDv7's first 48 bits."""
    parsed = uuid.UUID(request_id)
    if parsed.version != 7:
        raise ValueError("not a UUIDv7")
    at = datetime.fromtimestamp(int(parsed.hex[:12], 16) / 1000, UTC)
    day = datetime(at.year, at.month, at.day, tzinfo=UTC)
    low = day - timedelta(days=1) if at - SKEW < day else day
    high = day + timedelta(days=2) if at + SKEW >= day + timedelta(days=1) else day + timedelta(days=1)
    return low, high


class BigQueryRequestLog(RequestLog):
    """Rows in `project.dataset.table`, de-duplicated by the view `table_latest`; audit in `table_audit`."""

    def __init__(self, uri: str, client: bigquery.Client | None = None):
        project, dataset, table = parse_uri(uri)
        self.client = client or make_client(project)
        self.table = f"{project}.{dataset}.{table}"
        self.view = f"{self.table}_latest"
        self.audit_table = f"{self.table}_audit"

    def record(self, rec: PredictionRecord) -> None:
        failed = self.record_many([rec])
        if failed:
            raise InsertFailed(f"BigQuery refused the row: {failed[0]}")

    def record_many(self, recs: list[PredictionRecord]) -> dict[int, str]:
        """Stream rows (row id = request id); return {index: reason} of the rows BigQuery refused."""
        errors = self.client.insert_rows_json(
            self.table,
            [to_row(r) for r in recs],
            row_ids=[r.id for r in recs],
            timeout=TIMEOUT,
            retry=NO_RETRY,
        )
        return {e["index"]: (e.get("errors") or [{}])[0].get("reason", "invalid") for e in errors}

    def get(self, request_id: str) -> PredictionRecord | None:
        try:
            low, high = id_window(request_id)
        except ValueError:
            return None
        sql = f"SELECT * FROM `{self.table}` WHERE id = @id AND {_WINDOW} LIMIT 1"
        rows = self._query(sql, _text("id", request_id), _time("low", low), _time("high", high))
        return from_row(rows[0]) if rows else None

    def delete(self, request_id: str) -> None:
        """Erase by DML (refused while the row is in the streaming buffer: the outbox retries)."""
        try:
            low, high = id_window(request_id)
        except ValueError:
            return  # no record has such an id
        sql = f"DELETE FROM `{self.table}` WHERE id = @id AND {_WINDOW}"
        self._query(sql, _text("id", request_id), _time("low", low), _time("high", high), write=True)

    def count_image(self, uri: str, exclude: Collection[str] = ()) -> int:
        sql = (
            f"SELECT COUNT(*) AS n FROM `{self.view}` WHERE (image_uri = @uri OR heatmap_uri = @uri) "
            "AND id NOT IN UNNEST(@exclude)"
        )
        return int(self._query(sql, _text("uri", uri), _ids(exclude))[0]["n"])

    def search(self, query: HistoryQuery, exclude: Collection[str] = ()) -> list[PredictionRecord]:
        where = ["id NOT IN UNNEST(@exclude)"]
        params: list[Any] = [_ids(exclude)]
        if query.predicted_class is not None:
            where.append("predicted_class = @predicted_class")
            params.append(_text("predicted_class", query.predicted_class))
        for name, op in (("since", ">="), ("until", "<")):
            value = getattr(query, name)
            if value is not None:
                where.append(f"created_at {op} @{name}")
                params.append(_time(name, parse_time(value)))
        sql = f"SELECT * FROM `{self.view}` WHERE {' AND '.join(where)} ORDER BY created_at DESC LIMIT @limit"
        params.append(ScalarQueryParameter("limit", "INT64", query.limit))
        return [from_row(row) for row in self._query(sql, *params)]

    def audit(
        self, actor: str, action: str, detail: str, at: str | None = None, row_id: str | None = None
    ) -> None:
        row = {"at": at or format_time(datetime.now(UTC)), "actor": actor, "action": action}
        row["detail"] = detail
        errors = self.client.insert_rows_json(
            self.audit_table, [row], row_ids=[row_id or str(uuid.uuid4())], timeout=TIMEOUT, retry=NO_RETRY
        )
        if errors:
            raise InsertFailed("BigQuery refused the audit row")

    def _query(self, sql: str, *params: Any, write: bool = False) -> list[Any]:
        config = bigquery.QueryJobConfig(query_parameters=list(params))
        retry = NO_RETRY if write else READ_RETRY
        try:
            result = self.client.query_and_wait(
                sql,
                job_config=config,
                api_timeout=TIMEOUT,
                wait_timeout=TIMEOUT,
                retry=retry,
                job_retry=NO_RETRY,
            )
            return list(result)
        except TRANSIENT as exc:
            if write:
                raise  # the outbox retries it
            raise BackendUnavailable("the request log is unavailable now; try again") from exc


def _text(name: str, value: str) -> ScalarQueryParameter:
    return ScalarQueryParameter(name, "STRING", value)


def _time(name: str, value: datetime) -> ScalarQueryParameter:
    return ScalarQueryParameter(name, "TIMESTAMP", value)


def _ids(ids: Collection[str]) -> ArrayQueryParameter:
    return ArrayQueryParameter("exclude", "STRING", sorted(ids))


def init_bigquery(uri: str, *, retention_days: int | None = None) -> None:
    """Create or migrate the dataset, the partitioned table and audit table, and the view."""
    project, dataset, _ = parse_uri(uri)
    requests_log = BigQueryRequestLog(uri)
    client = requests_log.client
    client.create_dataset(bigquery.Dataset(f"{project}.{dataset}"), exists_ok=True, timeout=TIMEOUT)
    expiration = retention_days * 86_400_000 if retention_days else None
    _ensure_table(client, requests_log.table, SCHEMA, "created_at", expiration, clustering=["id"])
    _ensure_table(client, requests_log.audit_table, AUDIT_SCHEMA, "at", None)  # the audit trail is kept
    view = bigquery.Table(requests_log.view)
    view.view_query = VIEW_SQL.format(table=requests_log.table)
    try:
        current = client.get_table(requests_log.view, timeout=TIMEOUT)
    except gexc.NotFound:
        client.create_table(view, timeout=TIMEOUT)
        log.info("created the de-duplicating view")
        return
    if current.view_query != view.view_query:
        current.view_query = view.view_query
        client.update_table(current, ["view_query"], timeout=TIMEOUT)
        log.info("updated the de-duplicating view")


def _ensure_table(
    client: bigquery.Client,
    table_id: str,
    schema: list[SchemaField],
    partition_field: str,
    expiration_ms: int | None,
    clustering: list[str] | None = None,
) -> None:
    """Create the table partitioned by day on `partition_field`, or add the columns it lacks (nullable)."""
    try:
        table = client.get_table(table_id, timeout=TIMEOUT)
    except gexc.NotFound:
        table = bigquery.Table(table_id, schema=schema)
        table.time_partitioning = bigquery.TimePartitioning(
            type_=bigquery.TimePartitioningType.DAY, field=partition_field, expiration_ms=expiration_ms
        )
        table.clustering_fields = clustering
        client.create_table(table, timeout=TIMEOUT)
        log.info("created a day-partitioned table with %d columns", len(schema))
        return
    added = [_nullable(field) for field in schema if field.name not in {f.name for f in table.schema}]
    if added:
        table.schema = [*table.schema, *added]
        client.update_table(table, ["schema"], timeout=TIMEOUT)
        log.info("added %d nullable columns", len(added))


def _nullable(field: SchemaField) -> SchemaField:
    """A column added to an existing table can only be NULLABLE (or REPEATED)."""
    mode = "REPEATED" if field.mode == "REPEATED" else "NULLABLE"
    return SchemaField(field.name, field.field_type, mode=mode, fields=field.fields)
