"""`score-archive --bigquery`: two runs into one table of the local BigQuery stand-in, one row per image."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from covidxray.backends.bigquery import make_client
from tests.bigquery_server import BigQueryServer

from .conftest import SAMPLES, Run

TABLE = "proj.archive.scores"


@pytest.fixture
def bigquery_host(tmp_path: Path) -> Iterator[str]:
    """The stand-in's address, for BIGQUERY_EMULATOR_HOST."""
    server = BigQueryServer(tmp_path / "bigquery.sqlite3").start()
    yield server.url
    server.stop()


def test_two_runs_into_one_table_leave_one_row_per_image(
    score_archive: Callable[..., Run], bigquery_host: str, tmp_path: Path
):
    films = tmp_path / "films"
    films.mkdir()
    for sample in sorted(SAMPLES.glob("*.jpg"))[:4]:
        shutil.copy(sample, films / sample.name)
    shutil.copy(films / sorted(os.listdir(films))[0], films / "same-film-again.jpg")
    env = {**os.environ, "BIGQUERY_EMULATOR_HOST": bigquery_host, "COVIDXRAY_OOD": "warn"}
    for _ in range(2):
        done = score_archive("--input", f"{films}/*", "--bigquery", TABLE, prefix=tmp_path / "out", env=env)
        assert done.returncode == 0, done.stderr
    os.environ["BIGQUERY_EMULATOR_HOST"] = bigquery_host
    try:
        rows = list(make_client("proj").list_rows(TABLE))
    finally:
        del os.environ["BIGQUERY_EMULATOR_HOST"]
    assert len(rows) == 4
    assert len({row["record_key"] for row in rows}) == 4
    assert {row["model_name"] for row in rows} == {"covidxray-cnn"}
    assert all(abs(row["p_covid"] + row["p_pneumonia"] + row["p_normal"] - 1) < 1e-3 for row in rows)


def test_a_malformed_table_name_is_a_usage_error(score_archive: Callable[..., Run], tmp_path: Path):
    done = score_archive("--input", f"{SAMPLES}/*.jpg", "--bigquery", "no-dots", prefix=tmp_path / "out")
    assert done.returncode == 2 and "PROJECT.DATASET.TABLE" in done.stderr
