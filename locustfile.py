"""Load test of a covidxray service: browser form posts, API predictions and health checks.

    locust -f locustfile.py --headless -u 5 -r 1 -t 60s --host http://127.0.0.1:8080

`make load` runs it against a local gunicorn. API calls send `Authorization: Bearer` with
$COVIDXRAY_TOKEN, or with a token minted from the service's own settings, as `covidxray token`
does (COVIDXRAY_JWT_SECRET or COVIDXRAY_JWT_KEYS, else the development secret in
COVIDXRAY_DATA_DIR). Uploads are the repository's sample radiographs (tests/samples/*.jpg) or the
JPEGs in $COVIDXRAY_SAMPLES. Any status other than the expected one, a 429 included, is a failure.
Each API user starts with a health check and a prediction: if the API refuses the token, the run stops.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
from pathlib import Path
from typing import Any

from locust import HttpUser, between, task

SAMPLES = Path(os.environ.get("COVIDXRAY_SAMPLES") or Path(__file__).resolve().parent / "tests" / "samples")
TOKEN_TTL = 6 * 3600
CSRF_FIELD = re.compile(r'name="csrf_token"\s+value="([^"]+)"')
RESULT_PATH = re.compile(r"/results/[0-9a-f-]+$")
FLAGS = ("trouble_breathing", "chest_pain", "tiredness", "bluish_color", "runny_nose", "cough", "fever")


def load_samples(folder: Path) -> list[tuple[str, bytes]]:
    """The sample radiographs in `folder`; stop the run at once when there are none."""
    found = [(path.name, path.read_bytes()) for path in sorted(folder.glob("*.jpg"))]
    if not found:
        raise SystemExit(f"no sample images: {folder}/*.jpg matches nothing (set COVIDXRAY_SAMPLES)")
    return found


IMAGES = load_samples(SAMPLES)


@functools.cache
def api_token() -> str:
    """$COVIDXRAY_TOKEN, or a token signed with the configured key for subject `locust`."""
    if os.environ.get("COVIDXRAY_TOKEN"):
        return os.environ["COVIDXRAY_TOKEN"]
    from covidxray.settings import Settings
    from covidxray.web.auth import issue_token

    return issue_token(Settings.from_env().validated(), "locust", ttl=TOKEN_TTL)


def clinical_fields() -> dict[str, str]:
    """Optional clinical fields as a person might fill them: some left empty, a few symptoms ticked."""
    fields: dict[str, str] = {}
    if random.random() < 0.7:
        fields["age"] = str(random.randint(18, 95))
    if random.random() < 0.6:
        fields["sex"] = random.choice(("female", "male", "other"))
    if random.random() < 0.5:
        fields["symptom_days"] = str(random.randint(0, 21))
    fields.update({flag: "1" for flag in FLAGS if random.random() < 0.3})
    return fields


def upload() -> dict[str, tuple[str, bytes, str]]:
    name, data = random.choice(IMAGES)
    return {"image": (name, data, "image/jpeg")}


class FormUser(HttpUser):
    """Someone in a browser: opens the form, submits an X-ray with clinical fields, reads the result."""

    weight = 1
    wait_time = between(2, 5)

    @task
    def submit_xray(self) -> None:
        with self.client.get("/", name="/ (form)", catch_response=True) as page:
            found = CSRF_FIELD.search(page.text) if page.status_code == 200 else None
            if found is None:
                page.failure(f"expected the form with its csrf_token, got HTTP {page.status_code}")
                return
        with self.client.post(
            "/",
            data={"csrf_token": found.group(1), **clinical_fields()},
            files=upload(),
            allow_redirects=False,
            name="/ (form)",
            catch_response=True,
        ) as posted:
            location = posted.headers.get("Location", "")
            if posted.status_code != 303 or not RESULT_PATH.search(location):
                posted.failure(f"expected 303 to /results/<id>, got HTTP {posted.status_code} {location}")
                return
        with self.client.get(location, name="/results/<id>", catch_response=True) as result:
            if result.status_code != 200 or "Probabilities" not in result.text:
                result.failure(f"expected the result page, got HTTP {result.status_code}")


class ApiUser(HttpUser):
    """A program using the JSON API with a token: mostly predictions, sometimes reading one back."""

    weight = 2
    wait_time = between(1, 3)

    def on_start(self) -> None:
        """Check health, then the token with a first prediction: if the API refuses it, stop the run."""
        self.client.headers["Authorization"] = f"Bearer {api_token()}"
        self.ids: list[str] = []
        self.healthz()
        status = self.predict()
        if status in (401, 403):
            logging.error("the API refused the token (HTTP %s): stopping the run", status)
            self.environment.runner.quit()

    @task(6)
    def predict(self) -> int:
        """Upload a sample with clinical fields; keep its id for reading back. Returns the HTTP status."""
        with self.client.post(
            "/api/v1/predict", files=upload(), data=clinical_fields(), catch_response=True
        ) as response:
            body = _json(response)
            probabilities = body.get("probabilities") or {}
            if response.status_code != 200 or abs(sum(probabilities.values()) - 1) > 1e-3:
                response.failure(f"expected a prediction, got HTTP {response.status_code}: {body}")
            else:
                self.ids = [body["id"], *self.ids][:20]
            return int(response.status_code)

    @task(1)
    def read_back(self) -> None:
        if not self.ids:
            self.predict()
            return
        request_id = random.choice(self.ids)
        with self.client.get(
            f"/api/v1/predictions/{request_id}", name="/api/v1/predictions/<id>", catch_response=True
        ) as response:
            if response.status_code != 200 or _json(response).get("id") != request_id:
                response.failure(f"expected prediction {request_id}, got HTTP {response.status_code}")

    @task(1)
    def healthz(self) -> None:
        with self.client.get("/healthz", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"expected 200, got HTTP {response.status_code}")


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
