"""The one place that maps URI schemes to backend implementations: image stores and request logs.

The interfaces (`storage.ImageStore`, `requestlog.RequestLog`) import no implementation. This module
imports each one, the cloud ones only when their scheme is used (their client libraries are optional
extras); the composition root (`covidxray.web.app`) opens the configured URIs through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlparse

from covidxray.backends.requestlog import RequestLog, SqliteRequestLog
from covidxray.backends.storage import ImageStore, LocalImageStore

T = TypeVar("T")


def _folder(uri: str) -> ImageStore:
    parsed = urlparse(uri)  # file:///absolute/path or file://./relative/path
    return LocalImageStore(parsed.netloc + parsed.path)


def _bucket(uri: str) -> ImageStore:
    from covidxray.backends.gcs import GCSImageStore  # imports the Cloud Storage client only when used

    return GCSImageStore(uri)


def _sqlite(uri: str) -> RequestLog:
    return SqliteRequestLog(uri.split(":///", 1)[1])  # sqlite:///relative/path or sqlite:////absolute/path


def _bigquery(uri: str) -> RequestLog:
    from covidxray.backends.bigquery import BigQueryRequestLog  # imports the BigQuery client only when used

    return BigQueryRequestLog(uri)


#: scheme -> (how a URI of it starts, what opens it)
IMAGE_STORES: dict[str, tuple[str, Callable[[str], ImageStore]]] = {
    "file": ("file://", _folder),
    "gs": ("gs://", _bucket),
}
REQUEST_LOGS: dict[str, tuple[str, Callable[[str], RequestLog]]] = {
    "sqlite": ("sqlite:///", _sqlite),
    "bigquery": ("bigquery://", _bigquery),
}


def open_image_store(uri: str) -> ImageStore:
    """Build the image store that `uri` names (`file:///path` or `gs://bucket/prefix`)."""
    return _open("image store", IMAGE_STORES, uri)


def open_request_log(uri: str) -> RequestLog:
    """Build the request log that `uri` names (`sqlite:///path` or `bigquery://project/dataset/table`)."""
    return _open("request log", REQUEST_LOGS, uri)


def _open(kind: str, schemes: dict[str, tuple[str, Callable[[str], T]]], uri: str) -> T:
    """Open `uri` with its scheme's factory; an unknown scheme is a ValueError naming the known ones."""
    try:
        _, factory = schemes[urlparse(uri).scheme]
    except KeyError:
        known = ", ".join(prefix for prefix, _ in schemes.values())
        raise ValueError(f"unknown {kind} {uri!r}; known schemes: {known}") from None
    return factory(uri)
