"""Tests for temperature scaling, the softmax and the calibration error."""

from __future__ import annotations

import numpy as np
import pytest

from covidxray.predictors.calibration import decide, expected_calibration_error, fit_temperature, softmax


def test_softmax_rows_sum_to_one_and_temperature_flattens() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [1000.0, 0.0, -1000.0]])
    p1, p2 = softmax(logits), softmax(logits, temperature=2.0)
    np.testing.assert_allclose(p1.sum(axis=1), 1.0)
    assert p2[0, 0] < p1[0, 0]
    np.testing.assert_allclose(p1[0], np.exp([2, 1, 0]) / np.exp([2, 1, 0]).sum())
    assert np.isfinite(p1).all()


def test_fit_temperature_recovers_the_generating_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2.0
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    fitted = fit_temperature(true_logits * 3.0, labels)  # over-confident by a factor 3
    assert fitted == pytest.approx(3.0, rel=0.1)


def test_ece_hand_computed() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    labels = np.array([0, 1, 0, 1])
    # bins: 0.9 (2 items, accuracy 0.5, gap 0.4), 0.6 (1, acc 1, gap 0.4), 0.7 (1, acc 1, gap 0.3)
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3
    assert expected_calibration_error(probs, labels, bins=15) == pytest.approx(expected)


def test_ece_is_zero_when_perfectly_calibrated_and_confident() -> None:
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 0])) == 0.0


def test_decide_calls_the_top_class_unless_it_is_unsure_or_the_gate_flagged_it() -> None:
    probs = {"covid": 0.7, "pneumonia": 0.2, "normal": 0.1}
    assert decide(probs, 0.6) == ("covid", 0.7)
    assert decide(probs, 0.75) == ("uncertain", 0.7)
    assert decide(probs, 0.6, flagged=True) == ("uncertain", 0.7)
