"""Ships the outbox to the cloud backends in a daemon thread, drained on SIGTERM and at exit."""

from __future__ import annotations

import atexit
import json
import logging
import signal
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from covidxray.backends import outbox
from covidxray.backends.outbox import (
    AUDIT,
    DROP_IMAGE,
    DROP_RECORD,
    FAILED,
    IMAGE,
    RECORD,
    SHIPPED,
    Item,
    Outbox,
)
from covidxray.backends.requestlog import PredictionRecord

if TYPE_CHECKING:
    from covidxray.backends.bigquery import BigQueryRequestLog
    from covidxray.backends.gcs import GCSImageStore

log = logging.getLogger(__name__)


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

    def stop(self, drain_seconds: float | None = None) -> None:
        """Ship what can be shipped within `drain_seconds` (default DRAIN_SECONDS), then end the thread."""
        if drain_seconds is None:
            drain_seconds = outbox.DRAIN_SECONDS
        self._deadline = time.monotonic() + drain_seconds
        self._stop.set()
        self.outbox.wake.set()
        if self._thread.is_alive():
            self._thread.join(drain_seconds + 1.0)  # a shipment still hanging then stays leased

    def _run(self) -> None:
        while not self._stop.is_set():
            self.outbox.wake.clear()
            if not self.ship_once(ignore_due=self.draining.is_set())[0]:
                due, poll = self.outbox.next_due(), outbox.POLL_SECONDS
                self.outbox.wake.wait(poll if due is None else min(poll, max(0.01, due - time.time())))
        while time.monotonic() < self._deadline:  # stopping: ship what is waiting, backoff or not
            claimed, shipped = self.ship_once(ignore_due=True)
            if not claimed:
                break
            if not shipped:
                time.sleep(0.1)

    def ship_once(self, ignore_due: bool = False) -> tuple[int, int]:
        """Claim and ship one batch, refresh the gauges; return (claimed, shipped). Never raises."""
        try:
            items = self.outbox.claim(self.kinds, outbox.BATCH, ignore_due)
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
