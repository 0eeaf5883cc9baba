"""The service under gunicorn with 2 workers, over real HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests

from covidxray.settings import Settings
from covidxray.web.auth import issue_token

from .servers import gunicorn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("served")
    with gunicorn(data_dir) as url:
        yield url, data_dir


def test_predictions_and_metrics_across_two_workers(server, sample_jpeg):
    url, data_dir = server
    token = issue_token(Settings(data_dir=data_dir).validated(), "load-test")
    headers = {"Authorization": f"Bearer {token}"}
    ids = set()
    with requests.Session() as session:
        for _ in range(12):
            response = session.post(
                f"{url}/api/v1/predict", headers=headers, files={"image": ("x.jpg", sample_jpeg)}
            )
            assert response.status_code == 200, response.text
            ids.add(response.json()["id"])
        read = session.get(f"{url}/api/v1/predictions/{min(ids)}", headers=headers)
        assert read.status_code == 200
        metrics = session.get(f"{url}/metrics").text
    assert len(ids) == 12
    counted = re.search(
        r'covidxray_http_requests_total\{method="POST",route="/api/v1/predict",status="200"\} (\S+)', metrics
    )
    assert counted and float(counted.group(1)) == 12.0
    assert re.search(r'covidxray_predictions_total\{backend="keras",predicted_class="\w+"\} ', metrics)


def test_bad_upload_over_http_is_a_json_4xx(server):
    url, data_dir = server
    token = issue_token(Settings(data_dir=data_dir).validated(), "a")
    response = requests.post(
        f"{url}/api/v1/predict",
        headers={"Authorization": f"Bearer {token}"},
        files={"image": ("x.png", b"text")},
    )
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_type"


def test_the_config_gives_each_worker_one_blas_thread_unless_told():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"} | {"OMP_NUM_THREADS": "2"}
    code = (
        "import os, covidxray.gunicorn_conf; "
        "print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['OMP_NUM_THREADS'])"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "2"]  # one BLAS thread by default; an operator's own choice stays
