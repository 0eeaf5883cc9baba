"""The Cloud Storage image store against the gcp-storage-emulator, through the real client."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from gcp_storage_emulator.server import create_server
from google.api_core import exceptions as gexc
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

import covidxray.backends.gcs
from covidxray.backends.gcs import GCSImageStore
from covidxray.backends.registry import open_image_store
from covidxray.errors import BackendUnavailable, NotFound
from covidxray.local_gunicorn import free_port

BUCKET = "covidxray-test"


@contextmanager
def gcs_emulator(data_dir: Path, port: int = 0) -> Iterator[str]:
    """Run the emulator on `port` (0: a free one) over `data_dir` with the test bucket; yield its URL."""
    port = port or free_port()
    server = create_server("127.0.0.1", port, in_memory=False, default_bucket=BUCKET, data_dir=str(data_dir))
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def gcs_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A running emulator that the storage client talks to (STORAGE_EMULATOR_HOST)."""
    with gcs_emulator(tmp_path / "gcs") as url:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        yield url


@pytest.fixture
def store(gcs_url: str) -> GCSImageStore:
    """The store under `gs://covidxray-test/uploads`."""
    return GCSImageStore(f"gs://{BUCKET}/uploads")


def test_put_names_the_object_by_its_sha256_and_keeps_type_and_request_id(store: GCSImageStore) -> None:
    data = b"\x89PNG fake image bytes"
    digest = hashlib.sha256(data).hexdigest()
    request_id = "0193a8c2-0000-7000-8000-000000000001"
    stored = store.put(data, "png", content_type="image/png", request_id=request_id)
    assert stored.sha256 == digest
    assert stored.uri == f"gs://{BUCKET}/uploads/{digest[:2]}/{digest[2:4]}/{digest}.png"
    blob = storage.Client().bucket(BUCKET).get_blob(f"uploads/{digest[:2]}/{digest[2:4]}/{digest}.png")
    assert blob is not None
    assert blob.content_type == "image/png"
    assert blob.metadata == {"request_id": request_id}
    assert store.get(stored.uri) == data


def test_putting_the_same_bytes_twice_keeps_one_object(store: GCSImageStore) -> None:
    first = store.put(b"same bytes", "jpg", content_type="image/jpeg", request_id="a")
    second = store.put(b"same bytes", "jpg", content_type="image/jpeg", request_id="b")
    assert first == second
    assert len(list(storage.Client().list_blobs(BUCKET))) == 1


def test_upload_is_conditional_and_a_412_counts_as_stored(
    store: GCSImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def already_there(self: storage.Blob, data: bytes, **kwargs: Any) -> None:
        calls.append(kwargs)
        raise gexc.PreconditionFailed("At least one of the pre-conditions you specified did not hold.")

    monkeypatch.setattr(storage.Blob, "upload_from_string", already_there)
    stored = store.put(b"retried upload", "png", content_type="image/png", request_id="r")
    assert stored.uri.endswith(f"{hashlib.sha256(b'retried upload').hexdigest()}.png")
    assert calls[0]["if_generation_match"] == 0  # the emulator ignores preconditions; the client must send it


def test_a_large_upload_leaves_no_temporary_file_nor_partial_object(
    store: GCSImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    data = os.urandom(9 * 1024 * 1024)  # above the client's 8 MiB multipart limit: a resumable upload
    stored = store.put(data, "dcm", content_type="application/dicom", request_id="big")
    assert store.get(stored.uri) == data
    assert [b.name for b in storage.Client().list_blobs(BUCKET)] == [stored.uri.split(f"{BUCKET}/", 1)[1]]
    assert list(scratch.iterdir()) == []


def test_delete_erases_and_tolerates_a_missing_object(store: GCSImageStore) -> None:
    stored = store.put(b"to erase", "png", content_type="image/png", request_id="d")
    store.delete(stored.uri)
    store.delete(stored.uri)
    with pytest.raises(NotFound):
        store.get(stored.uri)


@pytest.mark.parametrize(
    "uri",
    [
        f"gs://other-bucket/uploads/ab/cd/{'0' * 64}.png",
        f"gs://{BUCKET}/elsewhere/ab/cd/{'0' * 64}.png",
        f"gs://{BUCKET}/uploads/../secrets.txt",
        f"file:///uploads/ab/cd/{'0' * 64}.png",
    ],
)
def test_uris_outside_the_store_are_not_found(store: GCSImageStore, uri: str) -> None:
    with pytest.raises(NotFound):
        store.get(uri)


def test_reading_while_storage_is_down_is_503_and_writing_raises_for_the_outbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.setattr(covidxray.backends.gcs, "READ_RETRY", DEFAULT_RETRY.with_timeout(0.3))
    store = GCSImageStore(f"gs://{BUCKET}/uploads")
    with pytest.raises(BackendUnavailable):
        store.get(store.locate(b"x", "png").uri)
    with pytest.raises(requests.ConnectionError):
        store.put(b"x", "png", content_type="image/png", request_id="r")


def test_open_image_store_knows_the_gs_scheme(gcs_url: str) -> None:
    opened = open_image_store(f"gs://{BUCKET}/a/b")
    assert isinstance(opened, GCSImageStore)
    assert (opened.bucket_name, opened.prefix) == (BUCKET, "a/b")


def test_evaluate_reads_a_gs_data_folder_with_its_manifest(gcs_url: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from covidxray.cli import main

    bucket = storage.Client().bucket(BUCKET)
    rows = ["file,patient_id"]
    samples = sorted((Path(__file__).parents[1] / "samples").glob("*.jpg"))
    for i, sample in enumerate(samples):
        name = f"test/{sample.name.split('-', 1)[0]}/{sample.name}"
        bucket.blob(f"cxr/{name}").upload_from_filename(str(sample))
        rows.append(f"{name},{sample.name.split('-')[1]}-{i}")
    bucket.blob("cxr/manifest.csv").upload_from_string("\n".join(rows) + "\n")
    result = CliRunner().invoke(main, ["evaluate", "--data", f"gs://{BUCKET}/cxr/test", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["n"] == len(samples) and report["accuracy"] == 1.0
    assert set(report["per_source"]) == {"mhh", "nih", "kermany"}


def test_a_missing_gs_data_folder_is_a_clear_error(gcs_url: str) -> None:
    from click.testing import CliRunner

    from covidxray.cli import main

    result = CliRunner().invoke(main, ["evaluate", "--data", f"gs://{BUCKET}/nothing/here", "--json"])
    assert result.exit_code == 2 and "no objects under gs://" in result.output
