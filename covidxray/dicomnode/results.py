"""Results back to the PACS: each prediction about a DICOM image becomes a Comprehensive SR and a
secondary capture, committed to a durable outbox and shipped to `COVIDXRAY_DICOM_DESTINATION`.

These objects carry the patient's identifiers (they must file into the right patient); they are
the only ones that do, wait only in the outbox file (`<data dir>/dicom-outbox.sqlite3`, SQLite
secure_delete) and are deleted once delivered. A PACS that is down gets them, once, when it is
back: delivery is retried with backoff, and a repeat delivery of the same SOP instance (a crash
between sending and settling) replaces, not adds, at the PACS.
"""

from __future__ import annotations

import io
import logging
import threading
import time

import highdicom as hd
from PIL import Image
from pydicom.dataset import Dataset

from covidxray.backends.outbox import Item, Outbox
from covidxray.backends.requestlog import PredictionRecord
from covidxray.dicomnode.destination import Destination, client_context, parse_destination, send
from covidxray.dicomnode.sc import build_sc
from covidxray.dicomnode.sr import build_sr
from covidxray.settings import Settings

log = logging.getLogger(__name__)

KIND = "dicom_result"
BATCH = 20
POLL_SECONDS = 0.5


class ResultSender:
    """Builds the SR and SC of a prediction, queues them, and ships the queue in a daemon thread."""

    def __init__(self, settings: Settings, max_delay: float = 60.0):
        assert settings.dicom_destination, "no COVIDXRAY_DICOM_DESTINATION"
        self.destination: Destination = parse_destination(settings.dicom_destination)
        self.tls = client_context(settings) if self.destination.tls else None
        self.ae_title = settings.dicom_ae_title
        self.device_uid = hd.UID()
        path = settings.data_dir / "dicom-outbox.sqlite3"
        self.outbox = Outbox(path, base_delay=0.5, max_delay=max_delay, secure_delete=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def enqueue(self, source: Dataset, record: PredictionRecord, picture: Image.Image) -> list[str]:
        """Build and durably queue the SR and SC about `source`; return their SOP instance UIDs."""
        uids = []
        for result in (build_sr(source, record, self.device_uid), build_sc(source, record, picture)):
            out = io.BytesIO()
            result.save_as(out, enforce_file_format=True)
            uid = str(result.SOPInstanceUID)
            self.outbox.add(KIND, uid, out.getvalue(), {"request_id": record.id})
            uids.append(uid)
        return uids

    def ship_once(self, ignore_due: bool = False) -> int:
        """Send one batch of due results; return how many arrived. Never raises."""
        try:
            items = self.outbox.claim((KIND,), BATCH, ignore_due)
            if not items:
                return 0
            reasons = self._send(items)
            self.outbox.settle(list(zip(items, reasons, strict=True)))
            failed = [reason for reason in reasons if reason]
            if failed:  # never a UID or an identifier in the log
                log.warning("dicom results: %d of %d not delivered (%s)", len(failed), len(items), failed[0])
            return len(items) - len(failed)
        except Exception:
            log.exception("dicom result pass failed")
            return 0

    def _send(self, items: list[Item]) -> list[str | None]:
        try:
            return send(self.destination, [bytes(item.body) for item in items], self.ae_title, self.tls)
        except Exception as exc:  # a peer that speaks nonsense: retried like one that is down
            return [type(exc).__name__] * len(items)

    def pending(self) -> int:
        """How many results wait in the outbox."""
        return int(self.outbox.state()["depth"])

    def start(self) -> None:
        """Ship in the background until `stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dicom-results", daemon=True)
            self._thread.start()

    def stop(self, drain_seconds: float = 5.0) -> None:
        """Ship what can be shipped within `drain_seconds`, then end the thread."""
        self._stop.set()
        self.outbox.wake.set()
        if self._thread is not None:
            self._thread.join(drain_seconds + 1.0)
            self._thread = None
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline and self.ship_once(ignore_due=True):
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self.outbox.wake.clear()
            if not self.ship_once():
                due = self.outbox.next_due()
                wait = POLL_SECONDS if due is None else min(POLL_SECONDS, max(0.01, due - time.time()))
                self.outbox.wake.wait(wait)


def describe(sender: ResultSender) -> dict[str, object]:
    """For /readyz: the destination's kind and the queue's depth and age (never the host)."""
    return {"destination": "dimse" if sender.destination.dimse else "dicomweb", **sender.outbox.state()}
