"""Data folders for training and evaluation: a local folder, or `gs://bucket/prefix` copied locally."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse


@contextmanager
def local_folder(location: str) -> Iterator[Path]:
    """Yield a local folder holding the data at `location`: a path, or gs://bucket/prefix copied locally.

    For Cloud Storage the copy keeps the folder's own name, and a `manifest.csv` beside the folder is
    copied beside it too, so that evaluation finds patients and sources as it does locally.
    """
    if not location.startswith("gs://"):
        path = Path(location)
        if not path.is_dir():
            raise FileNotFoundError(f"no folder {location}")
        yield path
        return
    parsed = urlparse(location)
    prefix = PurePosixPath(parsed.path.strip("/"))
    with tempfile.TemporaryDirectory(prefix="covidxray-data-") as tmp:
        root = Path(tmp) / (prefix.name or parsed.netloc)
        if not _download(parsed.netloc, str(prefix) if prefix.parts else "", root):
            raise FileNotFoundError(f"no objects under {location}")
        yield root


def _download(bucket_name: str, prefix: str, root: Path) -> int:
    """Copy every object under `prefix` into `root` (and the manifest beside it); return how many."""
    from google.cloud import storage  # type: ignore[attr-defined]

    client = storage.Client()
    count = 0
    for blob in client.list_blobs(bucket_name, prefix=f"{prefix}/" if prefix else None):
        relative = blob.name[len(prefix) + 1 :] if prefix else blob.name
        target = (root / relative).resolve()
        if not relative or relative.endswith("/") or not target.is_relative_to(root.resolve()):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))
        count += 1
    parent = str(PurePosixPath(prefix).parent) if prefix else ""
    manifest = client.bucket(bucket_name).blob(
        f"{parent}/manifest.csv" if parent not in ("", ".") else "manifest.csv"
    )
    if count and manifest.exists():
        manifest.download_to_filename(str(root.parent / "manifest.csv"))
    return count
