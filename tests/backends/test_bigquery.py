"""The BigQuery request log and `init_bigquery`, through the real client, against tests/bigquery_server.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import bigquery
from uuid6 import uuid7

import covidxray.backends.bigquery
from covidxray.backends.bigquery import BigQueryRequestLog, id_window, init_bigquery, make_client
from covidxray.backends.bigquery_schema import SCHEMA
from covidxray.backends.registry import open_request_log
from covidxray.backends.requestlog import HistoryQuery, PredictionRecord, SqliteRequestLog
from covidxray.errors import BackendUnavailable
from tests import helpers
from tests.bigquery_server import BigQueryServer

URI = "bigquery://proj/covidxray/predictions"
TABLE = "proj.covidxray.predictions"


@pytest.fixture
def start_bigquery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., BigQueryServer]]:
    """A function starting the stand-in (BIGQUERY_EMULATOR_HOST points at it); stopped after the test."""
    servers: list[BigQueryServer] = []

    def start(**options: float) -> BigQueryServer:
        server = BigQueryServer(tmp_path / "bigquery.sqlite3", **options).start()
        monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", server.url)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_bigquery: Callable[..., BigQueryServer]) -> BigQueryServer:
    """The stand-in, with the dataset, tables and view created."""
    started = start_bigquery()
    init_bigquery(URI)
    return started


@pytest.fixture
def bq(server: BigQueryServer) -> BigQueryRequestLog:
    """The request log."""
    return BigQueryRequestLog(URI)


def make_record(**changes: object) -> PredictionRecord:
    """A record created now with every field set, DICOM, clinical data and a heatmap included."""
    full: dict[str, object] = dict(
        backend="keras",
        model_name="covidxray-cnn",
        model_version="2026.11.1",
        image_uri="gs://b/uploads/ab/cd/abcd.png",
        sha256="ab" * 32,
        format="dicom",
        size_bytes=2048,
        latency_ms=12.5,
        predicted_class="covid",
        score=0.93,
        probabilities={"covid": 0.93, "pneumonia": 0.05, "normal": 0.02},
        warnings=["looks like a colour photograph, not a radiograph"],
        clinical={"age": 40, "sex": "female", "fever": 1},
        dicom={"modality": "DX", "view_position": "PA", "bits_stored": 12},
        heatmap_uri="gs://b/uploads/ef/01/ef01.png",
    )
    return helpers.make_record(**{**full, **changes})


def test_init_creates_a_day_partitioned_table_with_the_sqlite_logs_fields(
    server: BigQueryServer, tmp_path: Path
) -> None:
    client = make_client("proj")
    table = client.get_table(TABLE)
    assert table.time_partitioning.type_ == "DAY" and table.time_partitioning.field == "created_at"
    sqlite_log = SqliteRequestLog(tmp_path / "requests.sqlite3")
    columns = {row[1] for row in sqlite_log._conn().execute("PRAGMA table_info(predictions)")}
    expected = {"probabilities" if name.startswith("prob_") else name for name in columns}
    assert {field.name for field in table.schema} == expected
    probabilities = next(f for f in table.schema if f.name == "probabilities")
    assert probabilities.field_type == "RECORD"
    assert [f.name for f in probabilities.fields] == ["covid", "pneumonia", "normal"]
    assert "ROW_NUMBER() OVER (PARTITION BY id" in client.get_table(f"{TABLE}_latest").view_query
    assert [f.name for f in client.get_table(f"{TABLE}_audit").schema] == ["at", "actor", "action", "detail"]


def test_init_migrates_an_older_table_by_adding_nullable_columns(
    start_bigquery: Callable[..., BigQueryServer],
) -> None:
    start_bigquery()
    client = make_client("proj")
    client.create_dataset("proj.covidxray")
    older = [f for f in SCHEMA if f.name not in ("heatmap_uri", "modality", "view_position", "bits_stored")]
    client.create_table(bigquery.Table(TABLE, schema=older))
    init_bigquery(URI)
    init_bigquery(URI)  # idempotent
    schema = client.get_table(TABLE).schema
    assert [f.name for f in schema] == [f.name for f in older] + [
        "modality",
        "view_position",
        "bits_stored",
        "heatmap_uri",
    ]
    assert all(f.mode == "NULLABLE" for f in schema[len(older) :])


def test_a_record_reads_back_equal(bq: BigQueryRequestLog) -> None:
    record = make_record()
    bq.record(record)
    assert bq.get(record.id) == record
    sparse = make_record(
        predicted_class=None, score=None, probabilities=None, warnings=[], clinical={}, dicom={}
    )
    sparse.heatmap_uri = None
    bq.record(sparse)
    assert bq.get(sparse.id) == sparse
    assert bq.get(str(uuid7())) is None
    assert bq.get("not-a-uuid") is None


def test_reading_by_id_touches_only_the_ids_day_partition(
    bq: BigQueryRequestLog, server: BigQueryServer
) -> None:
    record = make_record()
    bq.record(record)
    bq.get(record.id)
    sql, params = server.store.statements[-1]
    assert sql.startswith(
        f"SELECT * FROM `{TABLE}` WHERE id = @id AND created_at >= @low AND created_at < @high"
    )
    assert params["high"] - params["low"] <= 2 * 86_400_000_000
    assert params["low"] <= params["high"] - 86_400_000_000 or params["low"] % 86_400_000_000 == 0


@pytest.mark.parametrize(
    ("at", "days"),
    [
        (datetime(2026, 11, 25, 12, 0, tzinfo=UTC), (25, 26)),
        (datetime(2026, 11, 25, 23, 59, 30, tzinfo=UTC), (25, 27)),
        (datetime(2026, 11, 25, 0, 0, 30, tzinfo=UTC), (24, 26)),
    ],
)
def test_the_window_of_an_id_is_its_day_and_a_neighbour_only_near_midnight(
    at: datetime, days: tuple[int, int]
) -> None:
    millis = int(at.timestamp() * 1000)
    request_id = f"{millis:012x}"[:8] + "-" + f"{millis:012x}"[8:] + "-7000-8000-000000000000"
    low, high = id_window(request_id)
    assert (low, high) == (
        datetime(2026, 11, days[0], tzinfo=UTC),
        datetime(2026, 11, 1, tzinfo=UTC) + timedelta(days=days[1] - 1),
    )


def test_a_retried_insert_is_stored_once_and_the_view_hides_what_slips_through(
    start_bigquery: Callable[..., BigQueryServer],
) -> None:
    start_bigquery(dedup_seconds=0)  # BigQuery's de-duplication is best effort: here it does nothing
    init_bigquery(URI)
    bq = BigQueryRequestLog(URI)
    record = make_record()
    bq.record(record)
    bq.record(record)
    assert len(list(bq.client.list_rows(TABLE))) == 2
    assert [r.id for r in bq.search(HistoryQuery())] == [record.id]
    assert bq.count_image(record.image_uri) == 1
    assert bq.get(record.id) == record


def test_insert_ids_deduplicate_within_the_window(bq: BigQueryRequestLog) -> None:
    record = make_record()
    bq.record(record)
    bq.record(record)
    assert [row["id"] for row in bq.client.list_rows(TABLE)] == [record.id]


def test_delete_is_refused_while_in_the_streaming_buffer_then_erases(
    start_bigquery: Callable[..., BigQueryServer],
) -> None:
    server = start_bigquery(buffer_seconds=600)
    init_bigquery(URI)
    bq = BigQueryRequestLog(URI)
    record = make_record()
    bq.record(record)
    with pytest.raises(gexc.BadRequest, match="streaming buffer"):
        bq.delete(record.id)
    server.store.buffer_seconds = 0  # the buffer has been flushed to storage
    bq.delete(record.id)
    assert bq.get(record.id) is None


def test_search_filters_orders_limits_and_excludes(bq: BigQueryRequestLog) -> None:
    old = make_record(created_at="2026-01-01T00:00:00.000000Z", predicted_class="normal")
    mid = make_record(created_at="2026-02-01T00:00:00.000000Z", predicted_class="covid")
    new = make_record(created_at="2026-03-01T00:00:00.000000Z", predicted_class="covid")
    for record in (mid, old, new):
        bq.record(record)
    assert [r.id for r in bq.search(HistoryQuery())] == [new.id, mid.id, old.id]
    assert [r.id for r in bq.search(HistoryQuery(predicted_class="covid"))] == [new.id, mid.id]
    assert [
        r.id for r in bq.search(HistoryQuery(since="2026-01-15T00:00:00Z", until="2026-03-01T00:00:00Z"))
    ] == [mid.id]
    assert [r.id for r in bq.search(HistoryQuery(limit=1))] == [new.id]
    assert [r.id for r in bq.search(HistoryQuery(), exclude={new.id})] == [mid.id, old.id]
    assert bq.count_image(old.image_uri) == 3
    assert bq.count_image(old.heatmap_uri or "") == 3
    assert bq.count_image(old.image_uri, exclude={old.id}) == 2


def test_audit_entries_go_to_the_second_table(bq: BigQueryRequestLog) -> None:
    bq.audit("admin", "export", "class=covid")
    rows = list(bq.client.list_rows(f"{TABLE}_audit"))
    assert [(r["actor"], r["action"], r["detail"]) for r in rows] == [("admin", "export", "class=covid")]


def test_a_refused_row_is_reported_and_holds_back_the_batch(bq: BigQueryRequestLog) -> None:
    good, bad = make_record(), make_record()
    bad.width = "wide"  # type: ignore[assignment]
    assert bq.record_many([good, bad]) == {0: "stopped", 1: "invalid"}
    assert list(bq.client.list_rows(TABLE)) == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        f"SELECT id FROM `{TABLE}`",
        f"SELECT * FROM `{TABLE}` WHERE id LIKE 'a%'",
        f"UPDATE `{TABLE}` SET status = 'x' WHERE TRUE",
        f"SELECT * FROM `{TABLE}` WHERE nonsense = @id",
    ],
)
def test_the_stand_in_refuses_statements_it_does_not_parse(bq: BigQueryRequestLog, sql: str) -> None:
    config = bigquery.QueryJobConfig(query_parameters=[bigquery.ScalarQueryParameter("id", "STRING", "x")])
    with pytest.raises(gexc.BadRequest, match="test server|Unrecognized name"):
        bq.client.query_and_wait(sql, job_config=config, retry=None, job_retry=None)


def test_query_jobs_and_their_results_work_through_jobs_insert(bq: BigQueryRequestLog) -> None:
    record = make_record()
    bq.record(record)
    config = bigquery.QueryJobConfig(query_parameters=[bigquery.ArrayQueryParameter("exclude", "STRING", [])])
    job = bq.client.query(
        f"SELECT * FROM `{TABLE}_latest` WHERE id NOT IN UNNEST(@exclude)", job_config=config
    )
    assert [row["id"] for row in job.result()] == [record.id]


def test_reads_while_bigquery_is_down_are_503_and_writes_raise_for_the_outbox(
    bq: BigQueryRequestLog, server: BigQueryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(covidxray.backends.bigquery, "READ_RETRY", Retry(initial=0.05, timeout=0.3))
    server.stop()
    with pytest.raises(BackendUnavailable):
        bq.get(str(uuid7()))
    with pytest.raises(BackendUnavailable):
        bq.search(HistoryQuery())
    with pytest.raises(requests.ConnectionError):  # writes fail at once: the outbox retries them
        bq.delete(str(uuid7()))
    with pytest.raises(requests.ConnectionError):
        bq.record_many([make_record()])


def test_open_request_log_knows_the_bigquery_scheme(server: BigQueryServer) -> None:
    opened = open_request_log(URI)
    assert isinstance(opened, BigQueryRequestLog)
    assert opened.table == TABLE
    with pytest.raises(ValueError, match="bigquery://project/dataset/table"):
        open_request_log("bigquery://proj/only-dataset")
