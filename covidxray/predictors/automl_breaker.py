"""The AutoML backend's health: a circuit breaker that fails fast while it keeps failing, and metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

FAILURES = Counter("covidxray_automl_failures_total", "Failed AutoML calls, by gRPC status", ["code"])
LAST_SUCCESS = Gauge(
    "covidxray_automl_last_success_timestamp_seconds",
    "Unix time of the last AutoML answer",
    multiprocess_mode="livemax",
)
CIRCUIT_OPEN = Gauge(
    "covidxray_automl_circuit_open",
    "1 while the AutoML circuit breaker fails fast",
    multiprocess_mode="livemax",
)


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; once `cooldown` seconds pass, lets one call probe."""

    def __init__(
        self, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic
    ):
        self.threshold, self.cooldown, self._clock = threshold, cooldown, clock
        self.failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """`closed`, `open` (failing fast) or `half_open` (the next call probes)."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "open" if self._clock() - self._opened_at < self.cooldown else "half_open"

    def allow(self) -> bool:
        """True when a call may go out; a probe re-arms the cool-down for the calls behind it."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._clock() - self._opened_at < self.cooldown:
                return False
            self._opened_at = self._clock()
            return True

    def success(self) -> None:
        """The backend answered: close."""
        with self._lock:
            self.failures, self._opened_at = 0, None
        CIRCUIT_OPEN.set(0)

    def failure(self) -> None:
        """The backend did not answer: open after `threshold` in a row, or at once after a failed probe."""
        with self._lock:
            self.failures += 1
            if self.failures >= self.threshold or self._opened_at is not None:
                self._opened_at = self._clock()
        if self._opened_at is not None:
            CIRCUIT_OPEN.set(1)
