"""Image stores: where each accepted upload is kept, content-addressed by sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from covidxray.errors import NotFound


@dataclass(frozen=True)
class StoredImage:
    """Where an image was stored and its content hash."""

    uri: str
    sha256: str


class ImageStore(ABC):
    """Keeps uploaded images; the same bytes always get the same URI."""

    @abstractmethod
    def put(self, data: bytes, extension: str, *, content_type: str, request_id: str) -> StoredImage:
        """Store `data` (idempotent) and return where it is."""

    @abstractmethod
    def get(self, uri: str) -> bytes:
        """Return the bytes at `uri`, or raise NotFound."""

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Erase the image at `uri` (no error when it is already gone)."""


class LocalImageStore(ImageStore):
    """A folder: `<root>/ab/cd/<sha256>.<ext>`, written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def put(self, data: bytes, extension: str, *, content_type: str, request_id: str) -> StoredImage:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / digest[:2] / digest[2:4] / f"{digest}.{extension}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredImage(uri=path.as_uri(), sha256=digest)

    def _path(self, uri: str) -> Path:
        path = Path(urlparse(uri).path).resolve()
        if not path.is_relative_to(self.root):
            raise NotFound()
        return path

    def get(self, uri: str) -> bytes:
        try:
            return self._path(uri).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound() from exc

    def delete(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)
