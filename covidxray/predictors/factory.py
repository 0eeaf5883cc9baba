"""The predictor of a service, chosen by backend name (`keras` or `automl`)."""

from __future__ import annotations

from covidxray.predictors.base import Predictor
from covidxray.predictors.keras import KerasPredictor
from covidxray.settings import Settings


def _automl(settings: Settings) -> Predictor:
    # Google's client libraries load only for this backend
    from covidxray.predictors.automl import AutoMLPredictor

    return AutoMLPredictor.from_settings(settings)


PREDICTORS = {"keras": KerasPredictor.from_settings, "automl": _automl}


def make_predictor(backend: str, settings: Settings) -> Predictor:
    """Build the predictor for `backend` (one of PREDICTORS)."""
    try:
        factory = PREDICTORS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(PREDICTORS)}") from None
    return factory(settings)
