"""The durable outbox: local commit, leases, backoff, ordering, read-through, drain on SIGTERM."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path

import pytest

from covidxray.backends import buffered
from covidxray.backends import outbox as ob
from covidxray.backends.requestlog import HistoryQuery, PredictionRecord, RequestLog, SqliteRequestLog
from covidxray.backends.storage import ImageStore, LocalImageStore, StoredImage
from covidxray.errors import NotFound
from covidxray.settings import Settings
from tests.helpers import make_record

ROOT = Path(__file__).resolve().parents[2]


class FakeCloudStore(ImageStore):
    """An in-memory bucket that raises ConnectionError while `down`."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts: Counter[str] = Counter()
        self.down = False

    def locate(self, data: bytes, extension: str) -> StoredImage:
        digest = hashlib.sha256(data).hexdigest()
        return StoredImage(uri=f"gs://fake/{digest}.{extension}", sha256=digest)

    def put(self, data: bytes, extension: str, *, content_type: str, request_id: str) -> StoredImage:
        if self.down:
            raise ConnectionError("bucket unreachable")
        stored = self.locate(data, extension)
        self.objects[stored.uri] = data
        self.puts[stored.uri] += 1
        return stored

    def get(self, uri: str) -> bytes:
        if uri not in self.objects:
            raise NotFound()
        return self.objects[uri]

    def delete(self, uri: str) -> None:
        if self.down:
            raise ConnectionError("bucket unreachable")
        self.objects.pop(uri, None)


class FakeCloudLog(RequestLog):
    """An in-memory BigQuery-like log: batches, refusals, a streaming buffer that refuses deletes."""

    def __init__(self) -> None:
        self.rows: dict[str, PredictionRecord] = {}
        self.audits: dict[str, tuple[str, ...]] = {}
        self.down = False
        self.refuse_deletes = 0
        self.poison = "poison"

    def record_many(self, recs: list[PredictionRecord]) -> dict[int, str]:
        if self.down:
            raise ConnectionError("dataset unreachable")
        bad = {i: "invalid" for i, rec in enumerate(recs) if rec.status == self.poison}
        if bad:
            return {i: bad.get(i, "stopped") for i in range(len(recs))}
        self.rows.update({rec.id: rec for rec in recs})
        return {}

    def record(self, rec: PredictionRecord) -> None:
        assert not self.record_many([rec])

    def get(self, request_id: str) -> PredictionRecord | None:
        return self.rows.get(request_id)

    def delete(self, request_id: str) -> None:
        if self.down or self.refuse_deletes:
            self.refuse_deletes = max(0, self.refuse_deletes - 1)
            raise RuntimeError("would affect rows in the streaming buffer")
        self.rows.pop(request_id, None)

    def count_image(self, uri: str, exclude: Collection[str] = ()) -> int:
        return sum(uri in (r.image_uri, r.heatmap_uri) for r in self.rows.values() if r.id not in exclude)

    def search(self, query: HistoryQuery, exclude: Collection[str] = ()) -> list[PredictionRecord]:
        found = [r for r in self.rows.values() if r.id not in exclude and buffered._matches(r, query)]
        return sorted(found, key=lambda r: r.created_at, reverse=True)[: query.limit]

    def audit(
        self, actor: str, action: str, detail: str, at: str | None = None, row_id: str | None = None
    ) -> None:
        if self.down:
            raise ConnectionError("dataset unreachable")
        self.audits[row_id or ""] = (at or "", actor, action, detail)


Wrapped = tuple[ImageStore, RequestLog, ob.Outbox, FakeCloudStore, FakeCloudLog]


@pytest.fixture
def wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Wrapped:
    """Outbox-wrapped fake cloud backends (worker not started: tests call ship_once)."""
    monkeypatch.setattr(ob, "BASE_DELAY", 0.05)
    cloud, cloud_log = FakeCloudStore(), FakeCloudLog()
    images, requests_log, outbox = buffered.wrap_cloud_backends(cloud, cloud_log, Settings(data_dir=tmp_path))
    assert outbox is not None and outbox.worker is not None
    return images, requests_log, outbox, cloud, cloud_log


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition` until true, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_the_embedded_defaults_need_no_outbox(tmp_path: Path) -> None:
    images, requests_log = LocalImageStore(tmp_path / "uploads"), SqliteRequestLog(tmp_path / "r.sqlite3")
    assert buffered.wrap_cloud_backends(images, requests_log, Settings(data_dir=tmp_path)) == (
        images,
        requests_log,
        None,
    )
    assert not (tmp_path / "outbox.sqlite3").exists()


def test_writes_are_committed_locally_and_readable_before_shipping(wrapped: Wrapped, tmp_path: Path) -> None:
    images, requests_log, outbox, cloud, cloud_log = wrapped
    stored = images.put(b"image bytes", "png", content_type="image/png", request_id="r1")
    record = make_record(image_uri=stored.uri)
    requests_log.record(record)
    assert cloud.objects == {} and cloud_log.rows == {}
    assert images.get(stored.uri) == b"image bytes"
    assert requests_log.get(record.id) == record
    assert requests_log.search(HistoryQuery()) == [record]
    assert requests_log.count_image(stored.uri) == 1
    conn = outbox._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert ob.Outbox(tmp_path / "outbox.sqlite3").state()["depth"] == 2  # on disk, for a restarted process


def test_a_restarted_worker_ships_what_was_left_and_reads_then_come_from_the_cloud(
    wrapped: Wrapped, tmp_path: Path
) -> None:
    images, requests_log, _, cloud, cloud_log = wrapped
    stored = images.put(b"image bytes", "png", content_type="image/png", request_id="r1")
    record = make_record(image_uri=stored.uri)
    requests_log.record(record)
    again = buffered.wrap_cloud_backends(cloud, cloud_log, Settings(data_dir=tmp_path))[2]
    assert again is not None
    again.start()
    wait_until(lambda: again.state()["depth"] == 0)
    again.stop(drain_seconds=1)
    assert cloud.objects == {stored.uri: b"image bytes"} and cloud_log.rows == {record.id: record}
    assert images.get(stored.uri) == b"image bytes" and requests_log.get(record.id) == record


def test_failed_attempts_back_off_exponentially_up_to_the_maximum(tmp_path: Path) -> None:
    outbox = ob.Outbox(tmp_path / "outbox.sqlite3", base_delay=1.0, max_delay=16.0)
    outbox.add(ob.RECORD, "id-1", "{}")
    for attempt in range(1, 8):
        (item,) = outbox.claim((ob.RECORD,), ignore_due=True)
        assert item.attempts == attempt
        before = time.time()
        outbox.settle([(item, "ConnectionError")])
        after, due = time.time(), outbox.next_due() or 0
        expected = min(16.0, 2.0 ** (attempt - 1))  # then jittered to 50-100 % of it
        assert before + 0.5 * expected <= due <= after + expected
    assert outbox.claim((ob.RECORD,)) == []  # not due yet


def test_a_lease_keeps_other_workers_off_an_item_until_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = ob.Outbox(tmp_path / "o.sqlite3"), ob.Outbox(tmp_path / "o.sqlite3")
    first.add(ob.IMAGE, "gs://fake/a.png", b"a")
    monkeypatch.setattr(ob, "LEASE_SECONDS", 2.0)
    assert [item.key for item in first.claim((ob.IMAGE,))] == ["gs://fake/a.png"]
    assert second.claim((ob.IMAGE,)) == []
    time.sleep(2.1)  # the first worker died without finishing: its lease runs out
    assert [item.attempts for item in second.claim((ob.IMAGE,))] == [2]


def test_concurrent_workers_never_claim_the_same_item(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    for n in range(300):
        ob.Outbox(path).add(ob.AUDIT, f"key-{n}", "{}")
    claimed: list[list[str]] = [[] for _ in range(4)]
    together = threading.Barrier(4)

    def work(index: int) -> None:
        outbox = ob.Outbox(path)  # its own connection, as another gunicorn worker has
        together.wait()
        while items := outbox.claim((ob.AUDIT,), limit=7):
            claimed[index].extend(item.key for item in items)
            time.sleep(0.002)  # shipping
            outbox.settle([(item, None) for item in items])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [key for keys in claimed for key in keys]
    assert sorted(everything) == sorted(f"key-{n}" for n in range(300))
    assert sum(1 for keys in claimed if keys) > 1


def test_writes_to_one_key_ship_in_order(wrapped: Wrapped) -> None:
    images, _, outbox, _, _ = wrapped
    stored = images.put(b"bytes", "png", content_type="image/png", request_id="r")
    outbox.claim((ob.IMAGE,))  # in flight: the erasure must wait for it
    images.delete(stored.uri)
    assert outbox.claim((ob.IMAGE, ob.DROP_IMAGE), ignore_due=True) == []
    with pytest.raises(NotFound):
        images.get(stored.uri)


def test_erasing_a_record_never_sent_just_cancels_it(wrapped: Wrapped) -> None:
    images, requests_log, outbox, cloud, _ = wrapped
    stored = images.put(b"bytes", "png", content_type="image/png", request_id="r")
    record = make_record(image_uri=stored.uri)
    requests_log.record(record)
    requests_log.delete(record.id)
    images.delete(stored.uri)
    assert requests_log.get(record.id) is None
    assert outbox.keys(ob.DROP_RECORD) == set() and outbox.keys(ob.IMAGE) == set()
    assert outbox.keys(ob.DROP_IMAGE) == {stored.uri}  # the same bytes may be in the bucket already


def test_erasing_a_shipped_record_hides_it_at_once_and_retries_the_refused_delete(wrapped: Wrapped) -> None:
    _, requests_log, outbox, _, cloud_log = wrapped
    record = make_record()
    requests_log.record(record)
    assert outbox.worker is not None and outbox.worker.ship_once() == (1, 1)
    cloud_log.refuse_deletes = 2  # the streaming buffer refuses DML for a while
    requests_log.delete(record.id)
    assert requests_log.get(record.id) is None
    assert requests_log.search(HistoryQuery()) == [] and requests_log.count_image(record.image_uri) == 0
    wait_until(lambda: outbox.worker.ship_once(ignore_due=True) == (1, 1))  # type: ignore[union-attr]
    assert cloud_log.rows == {} and outbox.state()["depth"] == 0


def test_a_refused_row_backs_off_while_the_rows_it_held_back_go_at_once(wrapped: Wrapped) -> None:
    _, requests_log, outbox, _, cloud_log = wrapped
    good, bad = make_record(), make_record(status="poison")
    requests_log.record(good)
    requests_log.record(bad)
    assert outbox.worker is not None and outbox.worker.ship_once() == (2, 0)
    assert outbox.worker.ship_once() == (1, 1)  # the good row, not the bad one (still backing off)
    assert list(cloud_log.rows) == [good.id] and outbox.keys(ob.RECORD) == {bad.id}


def test_search_and_count_merge_the_outbox_with_the_cloud(wrapped: Wrapped) -> None:
    _, requests_log, outbox, _, _ = wrapped
    shipped, waiting = (
        make_record(image_uri="gs://fake/same.png"),
        make_record(image_uri="gs://fake/same.png", predicted_class="covid"),
    )
    requests_log.record(shipped)
    assert outbox.worker is not None and outbox.worker.ship_once() == (1, 1)
    requests_log.record(waiting)
    assert [r.id for r in requests_log.search(HistoryQuery())] == [waiting.id, shipped.id]
    assert [r.id for r in requests_log.search(HistoryQuery(predicted_class="covid"))] == [waiting.id]
    assert [r.id for r in requests_log.search(HistoryQuery(limit=1))] == [waiting.id]
    assert requests_log.count_image("gs://fake/same.png") == 2


def test_audit_entries_go_through_the_outbox(wrapped: Wrapped) -> None:
    _, requests_log, outbox, _, cloud_log = wrapped
    requests_log.audit("admin", "view", "class=covid")
    assert cloud_log.audits == {}
    assert outbox.worker is not None and outbox.worker.ship_once() == (1, 1)
    ((row_id, (at, *entry)),) = cloud_log.audits.items()
    assert entry == ["admin", "view", "class=covid"] and at.endswith("Z") and row_id


def test_stop_drains_what_is_waiting_even_while_backing_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ob, "BASE_DELAY", 60.0)
    cloud, cloud_log = FakeCloudStore(), FakeCloudLog()
    images, requests_log, outbox = buffered.wrap_cloud_backends(cloud, cloud_log, Settings(data_dir=tmp_path))
    assert outbox is not None and outbox.worker is not None
    cloud.down = cloud_log.down = True
    images.put(b"bytes", "png", content_type="image/png", request_id="r")
    requests_log.record(make_record())
    assert outbox.worker.ship_once() == (2, 0)  # next attempt in 30-60 s
    cloud.down = cloud_log.down = False
    outbox.start()
    outbox.stop(drain_seconds=5)  # ships now, not when the backoff ends
    assert outbox.state()["depth"] == 0 and len(cloud.objects) == 1 and len(cloud_log.rows) == 1


SIGTERM_SCRIPT = """
import atexit, signal, sys, time
from pathlib import Path
from covidxray.backends import outbox as ob
from covidxray.backends.buffered import wrap_cloud_backends
from covidxray.settings import Settings
from tests.helpers import make_record
from tests.backends.test_outbox import FakeCloudLog, FakeCloudStore

cloud, cloud_log = FakeCloudStore(), FakeCloudLog()
atexit.register(lambda: print("shipped", len(cloud.objects), len(cloud_log.rows), flush=True))
if sys.argv[2] == "chained":
    signal.signal(signal.SIGTERM, lambda *_: (print("previous handler", flush=True), sys.exit(3)))
ob.BASE_DELAY = 60.0
images, requests_log, outbox = wrap_cloud_backends(cloud, cloud_log, Settings(data_dir=Path(sys.argv[1])))
cloud.down = cloud_log.down = True
outbox.start()
images.put(b"bytes", "png", content_type="image/png", request_id="r")
requests_log.record(make_record())
while outbox.worker.outbox.next_due() < time.time() + 10:
    time.sleep(0.02)  # the first attempts failed: the next in 30-60 s
cloud.down = cloud_log.down = False
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize(("previous", "code"), [("default", 128 + signal.SIGTERM), ("chained", 3)])
def test_sigterm_drains_the_outbox_and_chains_to_the_previous_handler(
    tmp_path: Path, previous: str, code: int
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(SIGTERM_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), previous],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == code
    assert "shipped 1 1" in output
    assert ("previous handler" in output) == (previous == "chained")
    assert ob.Outbox(tmp_path / "outbox.sqlite3").state()["depth"] == 0
