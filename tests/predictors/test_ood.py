"""The gate for inputs that are not frontal chest radiographs: what each kind of input gets."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from covidxray import create_app
from covidxray.backends.requestlog import SqliteRequestLog
from covidxray.cli import main
from covidxray.labels import LABELS, UNCERTAIN
from covidxray.ml.gate_fit import cross_validate, fit, patients_of, patients_of_films
from covidxray.predictors.gate import GRID, Gate, open_guard, summarize
from covidxray.predictors.runtime import DEFAULT_MODEL
from covidxray.settings import ConfigError, Settings

SAMPLES = sorted((Path(__file__).parents[1] / "samples").glob("*.jpg"))
OOD = Path(__file__).resolve().parents[3] / "shared" / "data" / "ood"  # never copied into the repository
needs_ood = pytest.mark.skipif(not OOD.is_dir(), reason=f"the non-frontal examples are not at {OOD}")


def jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return out.getvalue()


# One CT slice and one lateral film of OOD. The shipped gate's head was trained on OOD, so it catches all
# of them; the model card gives what it catches of patients it never saw. These tests say what a caught
# input gets, not how many are caught.
def ct_slice() -> bytes:
    return (OOD / "ct" / "ct_19_791143a874.jpg").read_bytes()


def lateral_film() -> bytes:
    return (OOD / "lateral" / "lateral_13_55e352c954.jpeg").read_bytes()


def colour_photo() -> bytes:
    from sklearn.datasets import load_sample_image

    return jpeg(Image.fromarray(load_sample_image("china.jpg")))


def grey_photo() -> bytes:
    from sklearn.datasets import load_sample_image

    return jpeg(Image.fromarray(load_sample_image("flower.jpg")).convert("L"))


def generated() -> dict[str, bytes]:
    """Pictures that are plainly not radiographs: noise, a gradient, a page of text."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (512, 512), dtype=np.uint8))
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (512, 1)))
    page = Image.new("L", (600, 800), 255)
    draw = ImageDraw.Draw(page)
    for line in range(30):
        draw.text((40, 30 + 25 * line), "Discharge summary: patient stable, follow-up in two weeks.", fill=0)
    return {"noise": jpeg(noise), "gradient": jpeg(gradient), "text": jpeg(page)}


def post(client, auth, data: bytes | list[bytes]):
    images = data if isinstance(data, list) else [data]
    files = [(io.BytesIO(d), f"x{i}.jpg") for i, d in enumerate(images)]
    return client.post("/api/v1/predict", headers=auth, data={"image": files})


@pytest.fixture
def client_for(settings: Settings, predictor):  # noqa: ANN001, ANN201
    """A test client of the Keras service under a given COVIDXRAY_OOD mode."""

    def make(mode: str):  # noqa: ANN202
        return create_app(
            backend="keras", settings=replace(settings, ood=mode), predictor=predictor
        ).test_client()

    return make


def test_the_shipped_model_carries_its_gate() -> None:
    meta = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    entry = meta["ood"]
    assert (DEFAULT_MODEL.parent / entry["file"]).is_file()
    assert entry["threshold"] > 0 and entry["val_false_refusals"] <= 0.01


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_frontal_films_pass_and_carry_their_score(client_for, auth, sample: Path) -> None:
    body = post(client_for("refuse"), auth, sample.read_bytes()).get_json()
    assert body["predicted_class"] in (*LABELS, UNCERTAIN), body
    assert 0 <= body["ood_score"] <= body["ood_threshold"]


@needs_ood
@pytest.mark.parametrize(
    ("make", "words"),
    [
        (ct_slice, "CT slice"),
        (lateral_film, "lateral"),
        (colour_photo, "colour photograph"),
        (grey_photo, ""),
    ],
    ids=["ct", "lateral", "colour-photo", "grey-photo"],
)
def test_non_frontal_inputs_are_refused_with_422_under_refuse(client_for, auth, make, words: str) -> None:
    response = post(client_for("refuse"), auth, make())
    body = response.get_json()
    assert response.status_code == 422, body
    assert body["error"]["code"] == "not_chest_radiograph"
    assert "not a frontal chest radiograph" in body["error"]["message"] and words in body["error"]["message"]
    assert "frontal (PA or AP) chest X-ray" in body["error"]["message"]  # what to send instead


@needs_ood
@pytest.mark.parametrize("make", [ct_slice, lateral_film, colour_photo, grey_photo])
def test_under_warn_they_are_scored_but_called_uncertain(client_for, auth, make) -> None:
    response = post(client_for("warn"), auth, make())
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["predicted_class"] == UNCERTAIN and set(body["probabilities"]) == set(LABELS)
    assert any("not a frontal chest radiograph" in w for w in body["warnings"])
    assert body["ood_score"] > body["ood_threshold"] or "colour photograph" in " ".join(body["warnings"])


@needs_ood
def test_under_off_they_are_scored_as_before(client_for, auth) -> None:
    body = post(client_for("off"), auth, ct_slice()).get_json()
    assert body["status"] == "ok" and body["ood_score"] is None and body["ood_threshold"] is None
    assert not any("frontal" in w for w in body["warnings"])


@needs_ood
def test_a_batch_with_one_ct_slice_scores_the_others_in_order(client_for, auth) -> None:
    films = [s.read_bytes() for s in SAMPLES[:3]]
    response = post(client_for("refuse"), auth, [films[0], films[1], ct_slice(), films[2]])
    results = response.get_json()["results"]
    assert response.status_code == 200 and len(results) == 4
    assert [r.get("error", {}).get("code") for r in results] == [None, None, "not_chest_radiograph", None]
    assert all(r["predicted_class"] in (*LABELS, UNCERTAIN) for i, r in enumerate(results) if i != 2)


@needs_ood
def test_a_refused_upload_is_stored_and_logged_with_its_reason(client_for, auth, tmp_path: Path) -> None:
    data = ct_slice()
    body = post(client_for("refuse"), auth, data).get_json()
    record = SqliteRequestLog(tmp_path / "requests.sqlite3").get(body["id"])
    assert record is not None and record.status == "refused" and record.probabilities is None
    assert record.warnings == [body["error"]["message"]] and record.ood_score > record.ood_threshold
    stored = [p for p in (tmp_path / "uploads").rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in stored] == [data]


@needs_ood
def test_the_browser_form_says_it_in_words(client_for) -> None:
    from tests.web.test_web import submit

    response = submit(client_for("refuse"), ct_slice())
    page = response.get_data(as_text=True)
    assert response.status_code == 422 and "not a frontal chest radiograph" in page
    assert "Traceback" not in page


@pytest.mark.parametrize("name", ["noise", "gradient", "text"])
def test_generated_non_radiographs_are_refused(client_for, auth, name: str) -> None:
    response = post(client_for("refuse"), auth, generated()[name])
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "not_chest_radiograph"


def test_an_unknown_mode_is_a_configuration_error(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="COVIDXRAY_OOD"):
        replace(settings, ood="maybe").validated()


def test_a_model_without_a_gate_is_refused_unless_the_gate_is_off(tmp_path: Path) -> None:
    meta = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    meta.pop("ood")
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="COVIDXRAY_OOD=off"):
        open_guard("refuse", tmp_path / "m.keras")
    assert open_guard("off", tmp_path / "m.keras") is None


CHANNELS = 4


def films(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Synthetic summaries (1 + GRID² regions of CHANNELS values) of films with a layout: channel 0 is
    bright in the left column of regions, channel 1 in the right one; `shift` moves every value."""
    regions = rng.normal(size=(n, GRID * GRID, CHANNELS)).astype(np.float32) + shift
    regions[:, 0::GRID, 0] += 4.0
    regions[:, GRID - 1 :: GRID, 1] += 4.0
    return np.concatenate([regions.mean(axis=1), regions.reshape(n, -1)], axis=1)


def mirrored(summaries: np.ndarray) -> np.ndarray:
    """The same films with their regions in mirrored places: the same pooled features, another layout."""
    regions = summaries[:, CHANNELS:].reshape(len(summaries), GRID, GRID, CHANNELS)[:, :, ::-1]
    return np.concatenate([summaries[:, :CHANNELS], regions.reshape(len(summaries), -1)], axis=1)


def test_summarize_gives_the_global_mean_then_each_region_mean() -> None:
    side = 2 * GRID
    maps = np.arange(side * side * 2, dtype=np.float32).reshape(side, side, 2)
    summary = summarize(maps)
    assert summary.shape == ((1 + GRID * GRID) * 2,)
    np.testing.assert_allclose(summary[:2], maps.mean(axis=(0, 1)))
    np.testing.assert_allclose(summary[2:4], maps[:2, :2].mean(axis=(0, 1)))  # top-left region first
    np.testing.assert_allclose(summary[4:6], maps[:2, 2:4].mean(axis=(0, 1)))  # then along the row
    np.testing.assert_allclose(summary[-2:], maps[-2:, -2:].mean(axis=(0, 1)))  # bottom-right last


def test_the_thresholds_let_through_all_but_the_stated_share_of_val(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train, val = films(rng, 600), films(rng, 400)
    labels = np.repeat([0, 1, 2], 200)
    kinds = {"ct": films(rng, 20, shift=8.0), "lateral": mirrored(films(rng, 30))}
    gate = fit(train, labels, val, max_false_refusals=0.01, kinds=kinds)
    assert np.mean(gate.scores(val) > gate.cut) <= 0.01
    far = gate.judge(films(rng, 1, shift=8.0)[0])
    assert not far.passed and far.looks_like == "ct" and "CT slice" in far.message()
    gate.save(tmp_path / "g.npz")
    again = Gate.load(tmp_path / "g.npz")
    np.testing.assert_allclose(again.scores(val), gate.scores(val), rtol=1e-5)
    assert again.kind_names == ("ct", "lateral") and again.threshold == pytest.approx(gate.threshold)
    assert again.head is not None and again.head.threshold == pytest.approx(gate.head.threshold)


def test_the_density_threshold_also_counts_training_films_scored_out_of_fold() -> None:
    rng = np.random.default_rng(4)
    train, labels, few_val = films(rng, 600), np.repeat([0, 1, 2], 200), films(rng, 10)
    new_films = films(rng, 4000)

    def refused(gate: Gate) -> float:
        return float(np.mean(gate.density(new_films) > gate.threshold))

    val_only = fit(train, labels, few_val)
    by_patient = fit(train, labels, few_val, groups=[f"p{i // 2}" for i in range(600)])
    assert refused(val_only) > 0.02  # ten val films put the 0.5 % quantile near their largest value
    assert refused(by_patient) <= 0.01  # 610 held-out films put it where it belongs


def test_the_layout_head_catches_what_the_density_test_cannot_see() -> None:
    rng = np.random.default_rng(2)
    train, val, labels = films(rng, 600), films(rng, 400), np.repeat([0, 1, 2], 200)
    swapped = mirrored(films(rng, 50))  # the anatomy of a film in the wrong places
    density_only = fit(train, labels, val)
    assert density_only.head is None and np.mean(density_only.scores(swapped) > 1.0) < 0.1
    gate = fit(train, labels, val, kinds={"lateral": mirrored(films(rng, 40))})
    assert np.mean(gate.scores(swapped) > gate.cut) > 0.9


def test_cross_validation_keeps_each_patient_out_of_the_head_that_judges_it() -> None:
    rng = np.random.default_rng(3)
    train, val, labels = films(rng, 300), films(rng, 200), np.repeat([0, 1, 2], 100)
    kinds = {"lateral": mirrored(films(rng, 24)), "ct": films(rng, 16, shift=8.0)}
    groups = {"lateral": [f"p{i // 3}" for i in range(24)], "ct": [f"q{i // 4}" for i in range(16)]}
    result = cross_validate(train, labels, val, kinds, groups, folds=4)
    assert result["kinds"]["lateral"]["n"] == 24 and result["kinds"]["ct"]["n"] == 16
    assert result["kinds"]["lateral"]["caught"] >= 20 and result["kinds"]["ct"]["caught"] == 16
    assert len(result["val_refused_per_fold"]) == 4 and max(result["val_refused_per_fold"]) <= 2


def test_patients_come_from_the_manifest_else_each_file_is_its_own(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("file,kind,patient_id\nct/a.jpg,ct,p1\nct/b.jpg,ct,p1\n")
    files = [tmp_path / "ct" / name for name in ("a.jpg", "b.jpg", "c.jpg")]
    assert patients_of(tmp_path, files) == ["p1", "p1", "c.jpg"]


def test_training_films_take_their_patient_from_the_data_sets_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("file,split,label,patient_id\ntrain/covid/a.jpg,train,covid,p7\n")
    paths = [tmp_path / "train" / "covid" / name for name in ("a.jpg", "b.jpg")]
    assert patients_of_films(tmp_path / "train", paths) == ["p7", str(paths[1])]


@needs_ood
def test_predict_refuses_or_flags_a_ct_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ct.jpg").write_bytes(ct_slice())
    (tmp_path / "film.jpg").write_bytes(SAMPLES[0].read_bytes())
    monkeypatch.setenv("COVIDXRAY_OOD", "refuse")
    rows = json.loads(CliRunner().invoke(main, ["predict", str(tmp_path), "--json"]).stdout)
    assert "not a frontal chest radiograph" in rows[0]["error"] and rows[1]["predicted_class"] in LABELS
    monkeypatch.setenv("COVIDXRAY_OOD", "warn")
    rows = json.loads(CliRunner().invoke(main, ["predict", str(tmp_path), "--json"]).stdout)
    assert rows[0]["predicted_class"] == UNCERTAIN and "frontal" in rows[0]["warning"]


@needs_ood
def test_evaluate_reports_the_gate_per_kind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for sample in SAMPLES:
        (data / sample.name.split("-")[0]).mkdir(parents=True, exist_ok=True)
        (data / sample.name.split("-")[0] / sample.name).write_bytes(sample.read_bytes())
    args = ["evaluate", "--data", str(data), "--ood", str(OOD), "--json", "--report", str(tmp_path / "r")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    gate = json.loads(result.stdout)["ood"]
    assert gate["frontal"] == {"n": len(SAMPLES), "refused": 0, "rate": 0.0}
    assert set(gate["kinds"]) == {"ct", "lateral"} and all(
        k["caught"] <= k["n"] for k in gate["kinds"].values()
    )
    assert (tmp_path / "r" / "ood_histogram.png").stat().st_size > 1000


@needs_ood
def test_the_automl_service_runs_the_gate_itself_and_never_sends_a_refused_film(settings, auth) -> None:
    from covidxray.automl_standin.emulator import serve
    from tests.predictors.test_automl import automl_client, calls
    from tests.predictors.test_automl import post as automl_post

    standin = serve(port=0)
    try:
        client = automl_client(replace(settings, ood="refuse"), standin)
        refused = automl_post(client, auth, ct_slice())
        assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "not_chest_radiograph"
        assert calls(standin) == 0
        scored = automl_post(client, auth, SAMPLES[0].read_bytes()).get_json()
        assert scored["backend"] == "automl" and scored["ood_score"] <= scored["ood_threshold"]
        assert calls(standin) == 1
    finally:
        standin.stop()


def test_a_gate_fitted_on_another_grid_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    gate = fit(films(rng, 300), np.repeat([0, 1, 2], 100), films(rng, 100), kinds={"ct": films(rng, 9, 8.0)})
    assert gate.head is not None
    gate.head.weights = gate.head.weights[: CHANNELS * 9]  # as if fitted on a 3 x 3 grid
    gate.save(tmp_path / "g.npz")
    with pytest.raises(ValueError, match="a grid other than"):
        Gate.load(tmp_path / "g.npz")
