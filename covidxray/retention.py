"""Retention: erase images and records older than COVIDXRAY_RETENTION_DAYS."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from covidxray.backends.requestlog import HistoryQuery
from covidxray.service import Services, erase

log = logging.getLogger(__name__)

SWEEP_SECONDS = 3600
BATCH = 500


def purge_expired(services: Services, days: int, now: datetime | None = None) -> int:
    """Erase every record (and its image) created more than `days` days before `now`; return the count."""
    cutoff = ((now or datetime.now(UTC)) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    erased = 0
    while batch := services.log.search(HistoryQuery(until=cutoff, limit=BATCH)):
        for record in batch:
            erase(services, record)
        erased += len(batch)
    if erased:
        log.info("retention erased %d predictions older than %d days", erased, days)
    return erased


def start_sweeper(services: Services, days: int, interval: float = SWEEP_SECONDS) -> threading.Thread:
    """Run `purge_expired` now and then every `interval` seconds in a daemon thread."""

    def sweep() -> None:
        while True:
            try:
                purge_expired(services, days)
            except Exception:  # keep sweeping; the next round retries
                log.exception("retention sweep failed")
            stop.wait(interval)

    stop = threading.Event()
    thread = threading.Thread(target=sweep, name="retention-sweeper", daemon=True)
    thread.start()
    return thread
