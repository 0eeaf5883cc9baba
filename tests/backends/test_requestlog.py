"""The SQLite request log and the local image store."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ProcessPoolExecutor

import pytest

from covidxray.backends.registry import open_image_store, open_request_log
from covidxray.backends.requestlog import _MIGRATIONS, HistoryQuery, PredictionRecord, SqliteRequestLog
from covidxray.backends.storage import LocalImageStore


def record(request_id: str, created_at: str = "2026-11-25T10:00:00.000000Z", **changes) -> PredictionRecord:
    fields = dict(
        id=request_id, created_at=created_at, backend="keras", model_name="m", model_version="1",
        status="ok", image_uri="file:///x.png", sha256="ab", format="png", size_bytes=10, width=64,
        height=64, latency_ms=1.5,
        subject="alice", predicted_class="covid", score=0.9,
        probabilities={"covid": 0.9, "pneumonia": 0.05, "normal": 0.05}, clinical={"age": 40, "fever": 1},
        dicom={"modality": "DX"},
    )  # fmt: skip
    return PredictionRecord(**{**fields, **changes})


def test_a_record_round_trips(tmp_path):
    log = SqliteRequestLog(tmp_path / "log.sqlite3")
    log.record(record("a"))
    assert log.get("a") == record("a")
    assert log.get("missing") is None


def test_count_image_counts_records_that_use_the_uri_as_image_or_as_heatmap(tmp_path):
    log = SqliteRequestLog(tmp_path / "log.sqlite3")
    log.record(record("a", heatmap_uri="file:///map.png"))
    log.record(record("b", image_uri="file:///y.png", heatmap_uri="file:///map.png"))
    assert log.count_image("file:///x.png") == 1
    assert log.count_image("file:///map.png") == 2
    assert log.count_image("file:///nothing.png") == 0


def test_an_old_database_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(_MIGRATIONS[0] + "PRAGMA user_version = 1;")
        conn.execute(
            "INSERT INTO predictions (id, created_at, backend, model_name, model_version, status,"
            " image_uri, sha256, format, size_bytes, width, height, latency_ms, warnings) VALUES"
            " ('old', '2026-01-01T00:00:00Z', 'keras', 'm', '0', 'ok', 'file:///o.png', 'cd', 'png',"
            " 1, 64, 64, 1, '[]')"
        )
    log = SqliteRequestLog(path)
    assert log.get("old").model_version == "0"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(_MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _write_many(path: str, worker: int) -> None:
    log = SqliteRequestLog(path)
    for i in range(50):
        log.record(record(f"{worker}-{i}"))


def test_several_processes_write_safely(tmp_path):
    path = str(tmp_path / "shared.sqlite3")
    SqliteRequestLog(path)
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_many, [path, path], [1, 2]))
    assert SqliteRequestLog(path).count() == 100


def test_search_filters_by_class_and_time(tmp_path):
    log = SqliteRequestLog(tmp_path / "log.sqlite3")
    log.record(record("old", created_at="2026-11-01T00:00:00.000000Z"))
    log.record(record("new", created_at="2026-11-20T00:00:00.000000Z", predicted_class="normal"))
    assert [r.id for r in log.search(HistoryQuery())] == ["new", "old"]
    assert [r.id for r in log.search(HistoryQuery(predicted_class="covid"))] == ["old"]
    assert [r.id for r in log.search(HistoryQuery(since="2026-11-10"))] == ["new"]
    assert [r.id for r in log.search(HistoryQuery(until="2026-11-10"))] == ["old"]


def test_image_store_is_content_addressed_and_idempotent(tmp_path):
    store = LocalImageStore(tmp_path)
    first = store.put(b"bytes", "png", content_type="image/png", request_id="r1")
    again = store.put(b"bytes", "png", content_type="image/png", request_id="r2")
    assert first == again and first.uri.endswith(f"{first.sha256[:2]}/{first.sha256[2:4]}/{first.sha256}.png")
    assert store.get(first.uri) == b"bytes"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{first.sha256}.png"]
    store.delete(first.uri)
    store.delete(first.uri)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_image_store_refuses_uris_outside_its_folder(tmp_path):
    from covidxray.errors import NotFound

    with pytest.raises(NotFound):
        LocalImageStore(tmp_path / "store").get((tmp_path / "elsewhere.png").as_uri())


@pytest.mark.parametrize(
    ("opener", "uri"), [(open_image_store, "s3://b/p"), (open_request_log, "postgres://x")]
)
def test_unknown_schemes_name_the_known_ones(opener, uri):
    with pytest.raises(ValueError, match="known schemes"):
        opener(uri)


def test_relative_uris_follow_the_contract(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_image_store("file://./var/uploads").root == tmp_path / "var" / "uploads"
    assert (
        open_request_log("sqlite:///./var/requests.sqlite3").path.resolve()
        == tmp_path / "var" / "requests.sqlite3"
    )
