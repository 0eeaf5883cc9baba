"""The original design, kept for comparison only: a Flask route that loads the Keras model on every request.

Served by gunicorn exactly as the service (`gunicorn -c python:covidxray.gunicorn_conf
bench.original_app:app`). It decodes with the same `prepare`, so the benchmark isolates what the
original did differently: TensorFlow imported by the worker, `load_model` and `model.predict`
per request. It neither stores the image nor logs the request (the service does both).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jwt
import keras  # the original imported TensorFlow/Keras in every worker
from flask import Flask, jsonify, request

from covidxray.imaging.prepare import prepare
from covidxray.labels import LABELS
from covidxray.predictors.calibration import softmax
from covidxray.predictors.runtime import DEFAULT_MODEL, ModelInfo

MODEL = Path(os.environ.get("COVIDXRAY_MODEL") or DEFAULT_MODEL)
SECRET = os.environ.get("COVIDXRAY_JWT_SECRET", "")

app = Flask(__name__)


@app.post("/api/v1/predict")
def predict() -> Any:
    """Check the token, load the model, predict the uploaded image with `model.predict`."""
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    try:
        jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.PyJWTError:
        return jsonify(error={"code": "unauthorized", "message": "invalid token"}), 401
    upload = request.files.get("image")
    if upload is None:
        return jsonify(error={"code": "missing_image", "message": "send the X-ray in `image`"}), 400
    info = ModelInfo.load(MODEL.with_suffix(".json"))
    model = keras.models.load_model(MODEL, compile=False)  # on every request, as the original did
    prepared = prepare(upload.read(), info.input_size)
    logits, _features = model.predict(prepared.tensor[None], verbose=0)
    probabilities = softmax(logits, info.temperature)[0]
    return jsonify(probabilities={label: float(p) for label, p in zip(LABELS, probabilities, strict=True)})
