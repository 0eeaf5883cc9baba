"""locustfile.py against the Keras service under gunicorn, run as its own process.

Locust is never imported here: its gevent monkey-patching would break this process's threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .servers import ROOT, gunicorn

pytestmark = pytest.mark.slow

LOCUST = Path(sys.executable).parent / "locust"
SAMPLES = Path(os.environ.get("COVIDXRAY_SAMPLES") or ROOT / "tests" / "samples")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not LOCUST.exists():
        pytest.skip("locust is not installed (pip install locust)")
    if not list(SAMPLES.glob("*.jpg")):
        pytest.skip(f"no sample radiographs yet: {SAMPLES}/*.jpg matches nothing")
    data_dir = tmp_path_factory.mktemp("load")
    with gunicorn(data_dir, COVIDXRAY_ENV="development", COVIDXRAY_RATE_LIMIT="") as url:
        yield url, data_dir


def run_locust(
    url: str, data_dir: Path, out: Path, users: int, seconds: int, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[tuple[str, str], dict[str, Any]]]:
    """Run locustfile.py headless; return the process and its final stats by (method, name)."""
    environ = {k: v for k, v in os.environ.items() if k != "COVIDXRAY_TOKEN"}
    environ.update(COVIDXRAY_DATA_DIR=str(data_dir), COVIDXRAY_SAMPLES=str(SAMPLES), **env)
    command = [
        str(LOCUST),
        "-f",
        str(ROOT / "locustfile.py"),
        "--headless",
        "--users",
        str(users),
        "--spawn-rate",
        str(users),
        "--run-time",
        f"{seconds}s",
        "--stop-timeout",
        "5",
        "--host",
        url,
        "--only-summary",
        "--json-file",
        str(out / "stats"),
    ]
    result = subprocess.run(
        command, cwd=out, env=environ, capture_output=True, text=True, timeout=seconds + 60
    )
    report = out / "stats.json"
    assert report.exists(), f"locust wrote no stats (exit {result.returncode}):\n{result.stderr}"
    stats = json.loads(report.read_text())
    return result, {(entry["method"], entry["name"]): entry for entry in stats}


def test_mixed_load_runs_without_a_single_failure(server, tmp_path):
    url, data_dir = server
    result, stats = run_locust(url, data_dir, tmp_path, users=4, seconds=7)
    failures = {key: entry["num_failures"] for key, entry in stats.items() if entry["num_failures"]}
    assert result.returncode == 0 and not failures, f"{failures}\n{result.stdout}\n{result.stderr}"
    for key in (
        ("GET", "/ (form)"),
        ("POST", "/ (form)"),
        ("GET", "/results/<id>"),
        ("POST", "/api/v1/predict"),
        ("GET", "/healthz"),
    ):
        assert stats.get(key, {}).get("num_requests", 0) > 0, f"no {key} request:\n{result.stderr}"


def test_a_rejected_token_fails_the_run(server, tmp_path):
    url, data_dir = server
    result, stats = run_locust(url, data_dir, tmp_path, users=2, seconds=3, COVIDXRAY_TOKEN="not-a-jwt")
    assert result.returncode != 0
    assert "the API refused the token (HTTP 401)" in result.stderr
    predict = stats[("POST", "/api/v1/predict")]
    assert predict["num_failures"] == predict["num_requests"] > 0
