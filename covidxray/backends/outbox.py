"""A durable outbox: cloud writes are committed to local SQLite first; see shipping.py for the worker."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from prometheus_client import Counter, Gauge

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


class Shipper(Protocol):
    """What the outbox needs of the worker that ships it (`shipping.ShippingWorker`)."""

    def start(self) -> None: ...

    def stop(self, drain_seconds: float) -> None: ...


class Outbox:
    """The queue: one SQLite file shared by the workers of a host (WAL, synchronous=FULL)."""

    def __init__(
        self,
        path: str | Path,
        base_delay: float = BASE_DELAY,
        max_delay: float = MAX_DELAY,
        secure_delete: bool = False,  # overwrite deleted rows (bodies that carry identifiers)
    ):
        self.path = Path(path)
        self.secure_delete = secure_delete
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.base_delay, self.max_delay = base_delay, max_delay
        self.wake = threading.Event()
        self.worker: Shipper | None = None
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            if self.secure_delete:
                conn.execute("PRAGMA secure_delete=ON")
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
