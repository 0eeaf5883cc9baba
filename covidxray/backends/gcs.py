"""Google Cloud Storage image store: content-addressed objects, idempotent uploads."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from urllib.parse import urlparse

import requests
from google.api_core import exceptions as gexc
from google.cloud import storage  # type: ignore[attr-defined]
from google.cloud.storage.retry import DEFAULT_RETRY

from covidxray.backends.storage import ImageStore, StoredImage
from covidxray.errors import BackendUnavailable, NotFound

log = logging.getLogger(__name__)

# Reads retry briefly; writes are not retried here: the outbox retries them with backoff.
READ_RETRY = DEFAULT_RETRY.with_timeout(10.0)
TIMEOUT = (5.0, 60.0)  # connect, read (seconds)


class GCSImageStore(ImageStore):
    """A bucket: `gs://bucket/prefix/ab/cd/<sha256>.<ext>`, created once (if_generation_match=0)."""

    def __init__(self, uri: str, client: storage.Client | None = None):
        parsed = urlparse(uri)
        if parsed.scheme != "gs" or not parsed.netloc:
            raise ValueError("an image store on Cloud Storage looks like gs://bucket/prefix")
        self.bucket_name = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.client = client or storage.Client()
        self.bucket = self.client.bucket(self.bucket_name)

    def object_name(self, digest: str, extension: str) -> str:
        """The object name of content with sha256 `digest`."""
        name = f"{digest[:2]}/{digest[2:4]}/{digest}.{extension}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def locate(self, data: bytes, extension: str) -> StoredImage:
        """Where `data` is (or will be) stored, without uploading it."""
        digest = hashlib.sha256(data).hexdigest()
        return StoredImage(
            uri=f"gs://{self.bucket_name}/{self.object_name(digest, extension)}", sha256=digest
        )

    def put(self, data: bytes, extension: str, *, content_type: str, request_id: str) -> StoredImage:
        stored = self.locate(data, extension)
        blob = self.bucket.blob(self._name(stored.uri))
        blob.metadata = {"request_id": request_id}
        try:  # from memory: no temporary file
            blob.upload_from_string(
                data, content_type=content_type, if_generation_match=0, timeout=TIMEOUT, retry=None
            )
        except gexc.PreconditionFailed:
            log.debug("image already stored")  # same name, same bytes: an earlier try or another request
        return stored

    def get(self, uri: str) -> bytes:
        blob = self.bucket.blob(self._name(uri))
        try:
            return bytes(blob.download_as_bytes(timeout=TIMEOUT, retry=READ_RETRY))
        except gexc.NotFound as exc:
            raise NotFound() from exc
        except (gexc.RetryError, gexc.ServerError, requests.ConnectionError, requests.Timeout) as exc:
            raise BackendUnavailable("the image store is unavailable now; try again") from exc

    def delete(self, uri: str) -> None:
        with contextlib.suppress(gexc.NotFound):
            self.bucket.blob(self._name(uri)).delete(timeout=TIMEOUT, retry=None)

    def _name(self, uri: str) -> str:
        """The object name of a URI of this store (anything else is not found)."""
        parsed = urlparse(uri)
        name = parsed.path.lstrip("/")
        inside = not self.prefix or name.startswith(self.prefix + "/")
        if parsed.scheme != "gs" or parsed.netloc != self.bucket_name or not inside or ".." in name:
            raise NotFound()
        return name
