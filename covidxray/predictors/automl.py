"""The AutoML predictor: an AutoML image model on a Vertex AI endpoint (or a legacy AutoML model).

Calls have one time budget (COVIDXRAY_AUTOML_TIMEOUT), are retried with exponential backoff on
UNAVAILABLE and DEADLINE_EXCEEDED only, and fail fast while a circuit breaker is open. Nothing
here touches the network at load, so the service starts and stays ready while the cloud is away.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.auth.exceptions import DefaultCredentialsError
from PIL import Image

from covidxray.errors import ApiError, BackendUnavailable
from covidxray.imaging.prepare import Prepared, prepare
from covidxray.labels import LABELS
from covidxray.predictors.automl_breaker import FAILURES, LAST_SUCCESS, CircuitBreaker
from covidxray.predictors.automl_wire import Answer, PredictionClient, Resource, parse_labels, to_outcome
from covidxray.predictors.base import Outcome, Predictor
from covidxray.settings import ConfigError, Settings

log = logging.getLogger(__name__)

MAX_CONTENT_BYTES = 1_500_000  # Vertex AI's request limit for AutoML image models
RETRYABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded)


class BadGateway(BackendUnavailable):
    """502: the AutoML backend answered, but with an error or an unusable answer."""

    status = 502


class CircuitOpen(BackendUnavailable):
    """503: the backend failed repeatedly; it is not called until the cool-down ends."""


def content_for(image: Prepared, data: bytes) -> bytes:
    """What to send: the upload, or a PNG of the decoded image (DICOM), or a smaller JPEG when too large."""
    if image.format != "dicom" and len(data) <= MAX_CONTENT_BYTES:
        return data
    for side in (None, 2048, 1024, 512):
        img, out = image.image.copy(), io.BytesIO()
        if side is None:
            img.save(out, "PNG")
        else:
            img.thumbnail((side, side), Image.Resampling.LANCZOS)
            img.save(out, "JPEG", quality=90)
        if out.tell() <= MAX_CONTENT_BYTES:
            break
    return out.getvalue()


def _now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AutoMLPredictor(Predictor):
    """Asks a Vertex AI endpoint (or a legacy AutoML model) for the three class scores."""

    backend = "automl"

    def __init__(
        self,
        endpoint: str | None,
        api_endpoint: str | None = None,
        labels: str = Settings.automl_labels,
        timeout: float = Settings.automl_timeout,
        breaker: CircuitBreaker | None = None,
    ):
        if not endpoint:
            raise ConfigError(
                "the automl backend needs COVIDXRAY_AUTOML_ENDPOINT (projects/P/locations/L/endpoints/E)"
            )
        try:
            self.resource = Resource.parse(endpoint)
        except ValueError as exc:
            raise ConfigError(f"COVIDXRAY_AUTOML_ENDPOINT: {exc}") from exc
        self.api_endpoint = api_endpoint or self.resource.api_host
        self.mapping = parse_labels(labels)
        self.timeout = timeout
        self.breaker = breaker or CircuitBreaker()
        self.retry = Retry(predicate=if_exception_type(*RETRYABLE), initial=0.1, maximum=2.0, multiplier=2.0)
        self.model_name = (
            f"{'vertex-endpoint' if self.resource.vertex else 'automl-model'}-{self.resource.id}"
        )
        self.model_version = ""
        self._client: PredictionClient | None = None
        self._last_error: str | None = None
        self._last_error_at: str | None = None
        self._last_success_at: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AutoMLPredictor:
        """Build from the COVIDXRAY_AUTOML_* settings."""
        return cls(
            settings.automl_endpoint,
            settings.automl_api_endpoint,
            settings.automl_labels,
            settings.automl_timeout,
        )

    @property
    def ready(self) -> bool:
        return self._client is not None

    def load(self) -> None:
        if self._client is None:
            try:  # finds credentials but calls nothing: the service starts while the cloud is away
                self._client = PredictionClient(self.resource, self.api_endpoint)
            except DefaultCredentialsError as exc:
                raise ConfigError(
                    "no Google credentials for Vertex AI: run as a service account with "
                    "roles/aiplatform.user, or set GOOGLE_APPLICATION_CREDENTIALS"
                ) from exc
            log.info("automl client ready", extra={"endpoint": self.resource.name, "api": self.api_endpoint})

    def predict(self, image: Prepared, data: bytes, explain: bool = False) -> Outcome:
        answer = self._call(content_for(image, data))
        if answer.model:
            self.model_name, self.model_version = answer.model, answer.version
        try:
            outcome = to_outcome(answer, self.mapping)
        except ValueError as exc:
            raise BadGateway(f"the AutoML backend's answer is unusable: {exc}") from exc
        for warning in outcome.warnings:
            log.warning("automl answer: %s", warning)
        return outcome

    def _call(self, content: bytes) -> Answer:
        """One answer within the time budget, retried on transient errors; failures as BackendUnavailable."""
        if self._client is None:
            raise BackendUnavailable("the AutoML client is not loaded")
        client, deadline, attempts = self._client, time.monotonic() + self.timeout, [0]

        def attempt() -> Answer:
            if not self.breaker.allow():
                FAILURES.labels(code="CIRCUIT_OPEN").inc()
                failures, cooldown = self.breaker.failures, self.breaker.cooldown
                raise CircuitOpen(
                    f"the AutoML backend failed {failures} times in a row (last: {self._last_error}); "
                    f"it is not called for up to {cooldown:g} s"
                )
            attempts[0] += 1
            try:  # each attempt may use at most half the budget, so a stuck one can be retried once
                answer = client.predict(
                    content, timeout=max(min(deadline - time.monotonic(), self.timeout / 2), 0.01)
                )
            except RETRYABLE as exc:
                self._failed(exc)
                self.breaker.failure()
                raise
            except gexc.GoogleAPICallError as exc:
                self._failed(exc)
                self.breaker.success()  # it answered: the backend is up, the request or setup is wrong
                raise
            self.breaker.success()
            self._last_success_at = _now()
            LAST_SUCCESS.set(time.time())
            return answer

        try:
            return self.retry.with_timeout(self.timeout)(attempt)()
        except gexc.RetryError as exc:
            raise BackendUnavailable(
                f"the AutoML backend did not answer within {self.timeout:g} s "
                f"({attempts[0]} attempts, last: {self._last_error})"
            ) from exc
        except gexc.ResourceExhausted as exc:
            raise BackendUnavailable("the AutoML backend is over its quota (RESOURCE_EXHAUSTED)") from exc
        except gexc.GoogleAPICallError as exc:
            raise BadGateway(f"the AutoML backend refused the request ({_code(exc)})") from exc
        except ValueError as exc:
            raise BadGateway(f"the AutoML backend's answer is unusable: {exc}") from exc

    def _failed(self, exc: gexc.GoogleAPICallError) -> None:
        """Remember and count a failed attempt."""
        code = _code(exc)
        self._last_error, self._last_error_at = code, _now()
        FAILURES.labels(code=code).inc()
        log.warning("automl call failed", extra={"code": code, "endpoint": self.resource.name})

    def status(self) -> dict[str, Any]:
        state = super().status()
        state["automl"] = {
            "protocol": "vertex" if self.resource.vertex else "legacy-automl",
            "endpoint": self.resource.name,
            "api_endpoint": self.api_endpoint,
            "circuit": self.breaker.state,
            "consecutive_failures": self.breaker.failures,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "last_success_at": self._last_success_at,
        }
        return state


def _code(exc: gexc.GoogleAPICallError) -> str:
    """The gRPC status name of an API error, e.g. UNAVAILABLE."""
    code = exc.grpc_status_code
    return code.name if code is not None else type(exc).__name__


def predict_files(
    predictor: Predictor, files: Sequence[Path], workers: int = 4, progress: bool = False
) -> tuple[np.ndarray, list[str | None]]:
    """Probabilities (n, 3) in LABELS order for image files (NaN rows where unusable) and per-file errors.

    Backend failures raise BackendUnavailable rather than being counted against the images.
    """
    from tqdm import tqdm

    if not predictor.ready:
        predictor.load()
    probs = np.full((len(files), len(LABELS)), np.nan)
    errors: list[str | None] = [None] * len(files)

    def one(index: int) -> None:
        data = Path(files[index]).read_bytes()
        try:
            prepared = prepare(data, predictor.input_size)
            outcome = predictor.predict(prepared, data)
        except BackendUnavailable:
            raise
        except ApiError as exc:
            errors[index] = exc.message
            return
        probs[index] = [outcome.probabilities[label] for label in LABELS]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in tqdm(pool.map(one, range(len(files))), total=len(files), disable=not progress, unit="image"):
            pass
    return probs, errors
