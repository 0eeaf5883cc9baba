"""A durable outbox: cloud writes are committed to local SQLite first, then shipped by a background worker."""

from __future__ import annotations

import atexit
import json
import logging
import random
import signal
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import Counter, Gauge

from .errors import NotFound
from .requestlog import HistoryQuery, PredictionRecord, RequestLog, SqliteRequestLog
from .settings import Settings
from .storage import ImageStore, LocalImageStore, StoredImage

if TYPE_CHECKING:
    from .bigquery import BigQueryRequestLog
    from .gcs import GCSImageStore

log = logging.getLogger(__name__)

BASE_DELAY = 1.0  # seconds before the first retry, doubling with each failed attempt
MAX_DELAY = 300.0
LEASE_SECONDS = 120.0  # a claimed item is another worker's again after this (longer than any timeout)
DRAIN_SECONDS = 8.0  # what a stopping worker may spend shipping (Cloud Run allows 10 s after SIGTERM)
POLL_SECONDS = 1.0  # how often a worker looks for items other processes added
BATCH = 100
IMAGE, RECORD, AUDIT, DROP_IMAGE, DROP_RECORD = "image", "record", "audit", "drop_image", "drop_record"

DEPTH = Gauge(
    "covidxray_outbox_depth", "Cloud writes waiting in the local outbox", multiprocess_mode="livemax"
)
AGE = Gauge(
    "covidxray_outbox_oldest_age_seconds",
    "Age of the oldest waiting cloud write",
    multiprocess_mode="livemax",
)
SHIPPED = Counter("covidxray_outbox_shipped_total", "Cloud writes shipped from the outbox", ["kind"])
FAILED = Counter(
    "covidxray_outbox_failures_total", "Failed attempts to ship a cloud write (retried)", ["kind"]
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, key TEXT NOT NULL, body BLOB NOT NULL,
    meta TEXT NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0, error TEXT);
CREATE INDEX IF NOT EXISTS items_key ON items (key, id);
"""
# Due, not leased, and first of its key: writes to one image or one record ship in the order they came.
_CLAIMABLE = (
    "SELECT id FROM items AS i WHERE kind IN ({kinds}) AND lease_until < ? AND (due <= ? OR ?) "
    "AND NOT EXISTS (SELECT 1 FROM items AS e WHERE e.key = i.key AND e.id < i.id) ORDER BY id LIMIT ?"
)

_LEASE = "UPDATE items SET lease_until = ?, attempts = attempts + 1 WHERE id = ? AND lease_until < ?"


class Item(NamedTuple):
    """One waiting cloud write."""

    id: int
    kind: str
    key: str
    body: bytes
    meta: str
    attempts: int


class Outbox:
    """The queue: one SQLite file shared by the workers of a host (WAL, synchronous=FULL)."""

    def __init__(self, path: str | Path, base_delay: float = BASE_DELAY, max_delay: float = MAX_DELAY):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.base_delay, self.max_delay = base_delay, max_delay
        self.wake = threading.Event()
        self.worker: ShippingWorker | None = None
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def add(self, kind: str, key: str, body: bytes | str, meta: dict[str, Any] | None = None) -> None:
        """Commit one write (durable when this returns)."""
        now = time.time()
        self._conn().execute(
            "INSERT INTO items (kind, key, body, meta, created, due) VALUES (?, ?, ?, ?, ?, ?)",
            (kind, key, body, json.dumps(meta or {}), now, now),
        )
        self.wake.set()

    def latest(self, key: str) -> tuple[str, bytes] | None:
        """The kind and body of the newest waiting write to `key`."""
        row = self._conn().execute(
            "SELECT kind, body FROM items WHERE key = ? ORDER BY id DESC LIMIT 1", (key,)
        )
        found = row.fetchone()
        return None if found is None else (found[0], found[1])

    def drop(self, key: str, kind: str, drop_kind: str) -> None:
        """Queue the erasure of `key`, cancelling its idle writes (a record never sent needs no erasure)."""
        now = time.time()
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT id, attempts, lease_until FROM items WHERE key = ? AND kind = ?", (key, kind)
            )
            waiting = rows.fetchall()
            idle = [row for row in waiting if row[2] < now]
            conn.executemany("DELETE FROM items WHERE id = ?", [(row[0],) for row in idle])
            if not (
                kind == RECORD and waiting and len(idle) == len(waiting) and not any(r[1] for r in waiting)
            ):
                conn.execute(
                    "INSERT INTO items (kind, key, body, meta, created, due) VALUES (?, ?, '', '{}', ?, ?)",
                    (drop_kind, key, now, now),
                )
        self.wake.set()

    def bodies(self, kind: str) -> list[bytes]:
        """The bodies of the waiting writes of `kind`."""
        return [row[0] for row in self._conn().execute("SELECT body FROM items WHERE kind = ?", (kind,))]

    def keys(self, kind: str) -> set[str]:
        """The keys of the waiting writes of `kind`."""
        return {row[0] for row in self._conn().execute("SELECT key FROM items WHERE kind = ?", (kind,))}

    def claim(self, kinds: tuple[str, ...], limit: int = BATCH, ignore_due: bool = False) -> list[Item]:
        """Lease up to `limit` items so that no other worker ships them meanwhile."""
        now = time.time()
        with self._transaction() as conn:
            sql = _CLAIMABLE.format(kinds=", ".join("?" * len(kinds)))
            ids = [row[0] for row in conn.execute(sql, (*kinds, now, now, ignore_due, limit))]
            claimed = []
            for item_id in ids:
                cursor = conn.execute(_LEASE, (now + LEASE_SECONDS, item_id, now))
                claimed.extend([item_id] * cursor.rowcount)
            marks = ", ".join("?" * len(claimed))
            sql = f"SELECT id, kind, key, body, meta, attempts FROM items WHERE id IN ({marks}) ORDER BY id"
            return [Item(*row) for row in conn.execute(sql, claimed)]

    def settle(self, results: list[tuple[Item, str | None]]) -> None:
        """Forget shipped items (reason None); release failed ones after an exponential, jittered delay.

        A reason of "stopped" (a good row that a bad one held back) is due again at once.
        """
        now = time.time()
        with self._transaction() as conn:
            for item, reason in results:
                if reason is None:
                    conn.execute("DELETE FROM items WHERE id = ?", (item.id,))
                    continue
                delay = min(self.max_delay, self.base_delay * 2 ** (item.attempts - 1)) * random.uniform(
                    0.5, 1
                )
                due = now + (0 if reason == "stopped" else delay)
                conn.execute(
                    "UPDATE items SET lease_until = 0, due = ?, error = ? WHERE id = ?",
                    (due, reason, item.id),
                )

    def next_due(self) -> float | None:
        """When the next item may be claimed (None: the outbox is empty)."""
        return self._conn().execute("SELECT MIN(MAX(due, lease_until)) FROM items").fetchone()[0]  # type: ignore[no-any-return]

    def state(self) -> dict[str, Any]:
        """Depth and the age in seconds of the oldest item (also published as gauges)."""
        depth, oldest = self._conn().execute("SELECT COUNT(*), MIN(created) FROM items").fetchone()
        age = round(time.time() - oldest, 3) if oldest is not None else 0.0
        DEPTH.set(depth)
        AGE.set(age)
        return {"depth": depth, "oldest_age_s": age}

    def start(self) -> None:
        """Start shipping in the background."""
        if self.worker is not None:
            self.worker.start()

    def stop(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Ship what can be shipped within `drain_seconds`, then stop the worker."""
        if self.worker is not None:
            self.worker.stop(drain_seconds)


class OutboxImageStore(ImageStore):
    """Answers at once from the outbox; the worker uploads to the cloud store later."""

    def __init__(self, inner: GCSImageStore, outbox: Outbox):
        self.inner, self.outbox = inner, outbox

    def put(self, data: bytes, extension: str, *, content_type: str, request_id: str) -> StoredImage:
        stored = self.inner.locate(data, extension)
        latest = self.outbox.latest(stored.uri)
        if latest is None or latest[0] != IMAGE:  # the same bytes already waiting need no second copy
            meta = {"extension": extension, "content_type": content_type, "request_id": request_id}
            self.outbox.add(IMAGE, stored.uri, data, meta)
        return stored

    def get(self, uri: str) -> bytes:
        latest = self.outbox.latest(uri)
        if latest is None:
            return self.inner.get(uri)
        if latest[0] == DROP_IMAGE:
            raise NotFound()
        return bytes(latest[1])

    def delete(self, uri: str) -> None:
        self.outbox.drop(uri, IMAGE, DROP_IMAGE)


class OutboxRequestLog(RequestLog):
    """Records and audit entries go to the outbox; reads merge it with the cloud log."""

    def __init__(self, inner: BigQueryRequestLog, outbox: Outbox):
        self.inner, self.outbox = inner, outbox

    def record(self, rec: PredictionRecord) -> None:
        self.outbox.add(RECORD, rec.id, json.dumps(asdict(rec)))

    def get(self, request_id: str) -> PredictionRecord | None:
        latest = self.outbox.latest(request_id)
        if latest is None:
            return self.inner.get(request_id)
        return None if latest[0] == DROP_RECORD else PredictionRecord(**json.loads(latest[1]))

    def delete(self, request_id: str) -> None:
        self.outbox.drop(request_id, RECORD, DROP_RECORD)

    def _waiting(self) -> list[PredictionRecord]:
        return [PredictionRecord(**json.loads(body)) for body in self.outbox.bodies(RECORD)]

    def count_image(self, uri: str) -> int:
        waiting = sum(uri in (rec.image_uri, rec.heatmap_uri) for rec in self._waiting())
        return waiting + self.inner.count_image(uri, exclude=self.outbox.keys(DROP_RECORD))

    def search(self, query: HistoryQuery) -> list[PredictionRecord]:
        waiting = [rec for rec in self._waiting() if _matches(rec, query)]
        ids = {rec.id for rec in waiting}
        shipped = self.inner.search(query, exclude=self.outbox.keys(DROP_RECORD))
        merged = waiting + [rec for rec in shipped if rec.id not in ids]
        return sorted(merged, key=lambda rec: rec.created_at, reverse=True)[: query.limit]

    def audit(self, actor: str, action: str, detail: str) -> None:
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        entry = {"at": at, "actor": actor, "action": action, "detail": detail}
        self.outbox.add(AUDIT, str(uuid.uuid4()), json.dumps(entry))


def _matches(rec: PredictionRecord, query: HistoryQuery) -> bool:
    return (
        (query.predicted_class is None or rec.predicted_class == query.predicted_class)
        and (query.since is None or rec.created_at >= query.since)
        and (query.until is None or rec.created_at < query.until)
    )


class ShippingWorker:
    """Ships the outbox in a daemon thread: batches, retries with exponential backoff, a drain on stop."""

    def __init__(self, outbox: Outbox, images: GCSImageStore | None, log: BigQueryRequestLog | None):
        self.outbox, self.images, self.log = outbox, images, log
        self.kinds = (IMAGE, DROP_IMAGE) * (images is not None) + (RECORD, DROP_RECORD, AUDIT) * (
            log is not None
        )
        self.draining = threading.Event()
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._run, name="outbox-shipper", daemon=True)

    def start(self) -> None:
        """Start the thread; SIGTERM and interpreter exit will drain it."""
        _watch(self)
        self._thread.start()

    def stop(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Ship what can be shipped within `drain_seconds`, then end the thread."""
        self._deadline = time.monotonic() + drain_seconds
        self._stop.set()
        self.outbox.wake.set()
        if self._thread.is_alive():
            self._thread.join(drain_seconds + 1.0)  # a shipment still hanging then stays leased

    def _run(self) -> None:
        while not self._stop.is_set():
            self.outbox.wake.clear()
            if not self.ship_once(ignore_due=self.draining.is_set())[0]:
                due = self.outbox.next_due()
                self.outbox.wake.wait(
                    POLL_SECONDS if due is None else min(POLL_SECONDS, max(0.01, due - time.time()))
                )
        while time.monotonic() < self._deadline:  # stopping: ship what is waiting, backoff or not
            claimed, shipped = self.ship_once(ignore_due=True)
            if not claimed:
                break
            if not shipped:
                time.sleep(0.1)

    def ship_once(self, ignore_due: bool = False) -> tuple[int, int]:
        """Claim and ship one batch, refresh the gauges; return (claimed, shipped). Never raises."""
        try:
            items = self.outbox.claim(self.kinds, BATCH, ignore_due)
            shipped = self._ship(items) if items else 0
            self.outbox.state()
            return len(items), shipped
        except Exception:  # the outbox file itself failed: keep the thread, try again later
            log.exception("outbox pass failed")
            return 0, 0

    def _ship(self, items: list[Item]) -> int:
        reasons: dict[int, str | None] = {}  # item id -> why it failed (None: shipped)
        records = [item for item in items if item.kind == RECORD]
        if records:  # one streaming insert for the batch
            assert self.log is not None
            try:
                refused = self.log.record_many([PredictionRecord(**json.loads(i.body)) for i in records])
            except Exception as exc:
                refused = dict.fromkeys(range(len(records)), type(exc).__name__)
            reasons.update({item.id: refused.get(index) for index, item in enumerate(records)})
        for item in items:
            if item.kind != RECORD:
                try:
                    self._ship_one(item)
                    reasons[item.id] = None
                except Exception as exc:
                    reasons[item.id] = type(exc).__name__
        self.outbox.settle([(item, reasons[item.id]) for item in items])
        for item in items:
            (FAILED if reasons[item.id] else SHIPPED).labels(kind=item.kind).inc()
        failures = [reason for reason in reasons.values() if reason]
        if failures:  # kinds and error names only: never an id or a URI
            log.warning(
                "outbox: %d of %d writes failed (%s); retrying later", len(failures), len(items), failures[0]
            )
        return len(items) - len(failures)

    def _ship_one(self, item: Item) -> None:
        if item.kind in (IMAGE, DROP_IMAGE):
            assert self.images is not None
            if item.kind == DROP_IMAGE:
                return self.images.delete(item.key)
            meta = json.loads(item.meta)
            kwargs = {"content_type": meta["content_type"], "request_id": meta["request_id"]}
            self.images.put(bytes(item.body), meta["extension"], **kwargs)
            return None
        assert self.log is not None
        if item.kind == DROP_RECORD:
            return self.log.delete(item.key)
        return self.log.audit(**json.loads(item.body), row_id=item.key)


_WORKERS: weakref.WeakSet[ShippingWorker] = weakref.WeakSet()
_hooks = threading.Lock()
_hooked = False


def _stop_all() -> None:
    for worker in list(_WORKERS):
        worker.stop()


def _watch(worker: ShippingWorker) -> None:
    """Drain every worker at interpreter exit; on SIGTERM, skip the backoff and chain the old handler."""
    global _hooked
    with _hooks:
        _WORKERS.add(worker)
        if _hooked:
            return
        _hooked = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        for w in list(_WORKERS):
            w.draining.set()
            w.outbox.wake.set()
        if callable(previous):
            previous(signum, frame)  # gunicorn's worker: finish the requests in flight, then exit
        elif previous == signal.SIG_DFL:
            raise SystemExit(128 + signum)  # exit as the default would, but through atexit

    signal.signal(signal.SIGTERM, on_sigterm)


def wrap_cloud_backends(
    images: ImageStore, requests_log: RequestLog, settings: Settings
) -> tuple[ImageStore, RequestLog, Outbox | None]:
    """Put an outbox in front of the cloud backends; the embedded defaults need none."""
    cloud_images = None if isinstance(images, LocalImageStore) else images
    cloud_log = None if isinstance(requests_log, SqliteRequestLog) else requests_log
    if cloud_images is None and cloud_log is None:
        return images, requests_log, None
    base_delay = getattr(settings, "outbox_base_delay", None) or BASE_DELAY
    outbox = Outbox(settings.outbox or settings.data_dir / "outbox.sqlite3", base_delay, MAX_DELAY)
    outbox.worker = ShippingWorker(outbox, cloud_images, cloud_log)  # type: ignore[arg-type]
    if cloud_images is not None:
        images = OutboxImageStore(cloud_images, outbox)  # type: ignore[arg-type]
    if cloud_log is not None:
        requests_log = OutboxRequestLog(cloud_log, outbox)  # type: ignore[arg-type]
    return images, requests_log, outbox
