"""Serving runtimes: no TensorFlow by default, both runtimes agree, JPEG draft decoding stays close."""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from covidxray.imaging.prepare import prepare, to_tensor
from covidxray.predictors.keras import KerasPredictor
from covidxray.predictors.runtime import DEFAULT_MODEL
from covidxray.settings import Settings

SAMPLES = sorted((Path(__file__).parents[1] / "samples").glob("*.jpg"))
MODEL = Settings.from_env().model or DEFAULT_MODEL
needs_model = pytest.mark.skipif(
    not MODEL.with_suffix(".onnx").is_file(),
    reason=f"no model at {MODEL} (the shipped model is not there yet)",
)
SIZE = 224
DRAFT_MEAN_TOLERANCE = 0.01  # mean |draft - full| of the model input on the [0, 1] scale
DRAFT_MAX_TOLERANCE = 0.1  # largest single-pixel difference

SERVE_ONCE = """
import sys
from PIL import Image
import functools
import io
from covidxray import create_app
from covidxray.web.auth import issue_token
from covidxray.settings import Settings

settings = Settings.from_env(data_dir=sys.argv[1], jwt_keys={"": "k" * 40}, secret_key="s" * 40, ood="off",
                             image_store="file://" + sys.argv[1] + "/uploads",
                             request_log="sqlite:///" + sys.argv[1] + "/requests.sqlite3")
app = create_app(backend="keras", settings=settings)
png = io.BytesIO()
Image.linear_gradient("L").resize((300, 300)).save(png, "PNG")
response = app.test_client().post("/api/v1/predict", data=png.getvalue(), headers={
    "Authorization": "Bearer " + issue_token(settings, "t"), "Content-Type": "image/png"})
assert response.status_code == 200, response.get_data(as_text=True)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
assert not loaded, f"the serving path imported {loaded[:5]}"
print(app.extensions["covidxray"].predictor.status()["runtime"])
"""


@needs_model
def test_the_served_app_with_the_default_runtime_never_imports_tensorflow(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "COVIDXRAY_RUNTIME"}
    env["COVIDXRAY_MODEL"] = str(MODEL)
    done = subprocess.run(
        [sys.executable, "-c", SERVE_ONCE, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(MODEL.with_suffix(".json").read_text())["serve"]  # the twin the metadata serves
    assert done.stdout.split()[-1] == {"onnx-float": "onnx", "onnx-int8": "onnx-int8"}[served]


@needs_model
@pytest.mark.skipif(not SAMPLES, reason="tests/samples/*.jpg are not there yet (another change adds them)")
def test_both_runtimes_give_the_same_probabilities_on_the_samples() -> None:
    twin, keras_itself = KerasPredictor(MODEL, runtime="onnx-float"), KerasPredictor(MODEL, runtime="keras")
    twin.load()
    keras_itself.load()
    for sample in SAMPLES:
        data = sample.read_bytes()
        prepared = prepare(data, twin.input_size)
        a = twin.predict(prepared, data).probabilities
        b = keras_itself.predict(prepared, data).probabilities
        assert a.keys() == b.keys()
        np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-4, err_msg=sample.name)


def _radiograph(width: int, height: int, seed: int) -> Image.Image:
    """A smooth chest-like picture with film grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = (x - width / 2) / (width / 2), (y - height / 2) / (height / 2)
    img = 150 - 60 * (u**2 + 0.3 * v**2) + 70 * np.exp(-((u / 0.07) ** 2)) + 18 * np.sin(v * 22)
    for side in (-1, 1):
        img -= 80 * np.clip(1 - ((u - 0.42 * side) / 0.3) ** 2 - ((v + 0.05) / 0.62) ** 2, 0, 1) ** 0.5
    img += rng.normal(0, 5, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))


def _with_edges(img: Image.Image) -> Image.Image:
    """Hard edges as on real films: collimator borders, wires and burnt-in side markers."""
    img = img.copy()
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width - 1, 120], fill=0)
    for x in range(200, img.width, 300):
        draw.line([(x, 150), (x + 120, img.height - 150)], fill=255, width=4)
    draw.rectangle([100, 200, 400, 380], fill=255)
    draw.text((150, 1500), "L  PORTABLE", fill=255, font_size=120)
    return img


@functools.cache
def _large_jpeg(name: str) -> bytes:
    """A 2500×2000 JPEG: synthetic, synthetic with hard edges, or a sample scaled up."""
    if name == "synthetic":
        picture = _radiograph(2500, 2000, 1)
    elif name == "edges":
        picture = _with_edges(_radiograph(2500, 2000, 2))
    else:
        sample = Image.open(Path(__file__).parents[1] / "samples" / f"{name}.jpg").convert("L")
        picture = sample.resize((2500, 2000), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize("name", ["synthetic", "edges", *(p.stem for p in SAMPLES[:3])])
def test_jpeg_draft_decoding_stays_close_to_a_full_decode(name: str) -> None:
    data = _large_jpeg(name)
    prepared = prepare(data, SIZE)
    assert min(prepared.image.size) >= 2 * SIZE and prepared.image.size < (2500, 2000)  # draft was used
    assert (prepared.width, prepared.height) == (2500, 2000)
    full = Image.open(io.BytesIO(data))
    full.load()
    reference = to_tensor(full.convert("L"), SIZE)
    diff = np.abs(prepared.tensor - reference)
    assert float(diff.mean()) <= DRAFT_MEAN_TOLERANCE
    assert float(diff.max()) <= DRAFT_MAX_TOLERANCE
