"""Cloud backends behind the outbox: writes are queued locally, reads merge the queue with the cloud."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from covidxray.backends import outbox
from covidxray.backends.outbox import AUDIT, DROP_IMAGE, DROP_RECORD, IMAGE, RECORD, Outbox
from covidxray.backends.requestlog import HistoryQuery, PredictionRecord, RequestLog, SqliteRequestLog
from covidxray.backends.shipping import ShippingWorker
from covidxray.backends.storage import ImageStore, LocalImageStore, StoredImage
from covidxray.errors import NotFound
from covidxray.settings import Settings

if TYPE_CHECKING:
    from covidxray.backends.bigquery import BigQueryRequestLog
    from covidxray.backends.gcs import GCSImageStore


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


def wrap_cloud_backends(
    images: ImageStore, requests_log: RequestLog, settings: Settings
) -> tuple[ImageStore, RequestLog, Outbox | None]:
    """Put an outbox in front of the cloud backends; the embedded defaults need none."""
    cloud_images = None if isinstance(images, LocalImageStore) else images
    cloud_log = None if isinstance(requests_log, SqliteRequestLog) else requests_log
    if cloud_images is None and cloud_log is None:
        return images, requests_log, None
    base_delay = getattr(settings, "outbox_base_delay", None) or outbox.BASE_DELAY
    box = Outbox(settings.outbox or settings.data_dir / "outbox.sqlite3", base_delay, outbox.MAX_DELAY)
    box.worker = ShippingWorker(box, cloud_images, cloud_log)  # type: ignore[arg-type]
    if cloud_images is not None:
        images = OutboxImageStore(cloud_images, box)  # type: ignore[arg-type]
    if cloud_log is not None:
        requests_log = OutboxRequestLog(cloud_log, box)  # type: ignore[arg-type]
    return images, requests_log, box
