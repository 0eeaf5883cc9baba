"""Temperature scaling, the softmax the service applies, the call it makes, and calibration error."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from covidxray.labels import UNCERTAIN


def decide(
    probabilities: Mapping[str, float], uncertain_below: float, flagged: bool = False
) -> tuple[str, float]:
    """The top class and its probability; the class is `uncertain` when the top probability is below
    `uncertain_below` or the gate `flagged` the input (scored, but not called a finding). Every path
    (the service, `covidxray predict`, the archive pipeline) calls it."""
    top = max(probabilities, key=lambda label: probabilities[label])
    score = float(probabilities[top])
    return (top if score >= uncertain_below and not flagged else UNCERTAIN), score


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return class probabilities from logits divided by `temperature` (the one place this happens)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` at `temperature`."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fit the temperature minimising validation NLL (log-spaced grid, then golden-section refinement)."""
    labels = np.asarray(labels, dtype=np.int64)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))
    losses = [_nll(logits, labels, t) for t in grid]
    i = int(np.argmin(losses))
    lo, hi = np.log(grid[max(i - 1, 0)]), np.log(grid[min(i + 1, len(grid) - 1)])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _nll(logits, labels, float(np.exp(a))) < _nll(logits, labels, float(np.exp(b))):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2.0))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label expected calibration error with `bins` equal-width confidence bins."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)
