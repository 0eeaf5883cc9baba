"""`covidxray score-archive` with the DirectRunner, run in .venv-beam over a generated archive: the same
scores as `covidxray predict --json`, the API's error codes for bad files, idempotent re-runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.imaging.test_dicom import SECRETS

from .conftest import BAD, SAMPLES, Run

PREDICT = Path(sys.executable).parent / "covidxray"


@pytest.fixture(scope="module")
def predicted(archive: Path) -> dict[str, dict]:
    """`covidxray predict --json` (the service's environment) over every file of the archive."""
    files = sorted(str(p) for p in archive.iterdir())
    done = subprocess.run([PREDICT, "predict", "--json", *files], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return {row["file"]: row for row in json.loads(done.stdout)}


def test_every_probability_matches_covidxray_predict(first_run: Run, predicted: dict[str, dict]):
    results = {line["path"]: line for line in first_run.lines("results")}
    errors = {line["path"] for line in first_run.lines("errors")}
    scored = {path: row for path, row in predicted.items() if row.get("probabilities")}
    assert len(scored) >= 25
    for path, row in scored.items():
        if path.endswith("zz-copy-of-first.jpg"):
            continue  # the same bytes as another film: one line for both (below)
        line = results[path]
        assert line["predicted_class"] == row["predicted_class"], path
        assert line["score"] == pytest.approx(row["score"], abs=1e-5)
        for label, value in row["probabilities"].items():
            assert line["probabilities"][label] == pytest.approx(value, abs=1e-5), (path, label)
    assert {p for p, row in predicted.items() if row.get("error")} == errors


def test_result_lines_carry_the_model_sha256_and_warnings(first_run: Run):
    for line in first_run.lines("results"):
        assert set(line) >= {
            "file",
            "path",
            "sha256",
            "predicted_class",
            "score",
            "probabilities",
            "warnings",
        }
        assert line["model"] == {"name": "covidxray-cnn", "version": line["model"]["version"]}
        assert len(line["sha256"]) == 64 and abs(sum(line["probabilities"].values()) - 1) < 1e-3


def test_bad_files_go_to_the_errors_with_the_api_codes_and_the_run_says_how_many(
    first_run: Run, predicted: dict[str, dict]
):
    codes = {Path(line["path"]).name: line["error"]["code"] for line in first_run.lines("errors")}
    # genuine films that the gate calls non-frontal, as `covidxray predict` does (about 1 % of films)
    refused = {Path(path).name for path, row in predicted.items() if row.get("error")} - set(BAD)
    assert len(refused) <= 2
    assert codes == {**BAD, **dict.fromkeys(refused, "not_chest_radiograph")}
    assert f"{len(codes)} failed" in first_run.stderr
    assert "scored " in first_run.stderr and "images (" in first_run.stderr


def test_the_direct_runner_shows_a_progress_bar_to_the_last_file(first_run: Run, archive: Path):
    files = len(list(archive.iterdir()))
    assert "scoring: 100%" in first_run.stderr and f"{files}/{files}" in first_run.stderr


def test_one_line_per_image_even_under_two_names(first_run: Run):
    lines = first_run.lines("results")
    assert len({line["sha256"] for line in lines}) == len(lines)
    names = ("zz-copy-of-first.jpg", "covid-mhh-1.jpg")
    copies = [line for line in lines if Path(line["path"]).name in names]
    assert [Path(line["path"]).name for line in copies] == ["covid-mhh-1.jpg"]  # the first path, sorted


def test_a_rerun_rewrites_the_same_shards_and_no_duplicate(first_run: Run, score_archive, archive: Path):
    def shards(prefix: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(prefix.parent.glob(f"{prefix.name}-*.jsonl"))}

    before = shards(first_run.prefix)
    again = score_archive(
        "--input",
        f"{archive}/*",
        "--shards",
        "3",
        "--max-batch-size",
        "5",
        "--direct_num_workers=2",  # a Beam option, passed through: two threads now
        prefix=first_run.prefix,
    )
    assert again.returncode == 0, again.stderr
    assert shards(first_run.prefix) == before
    assert len(before) == 6  # 3 result and 3 error shards, empty ones written too


def test_dicom_is_scored_and_nothing_identifying_is_written(first_run: Run):
    (dicom,) = [line for line in first_run.lines("results") if line["path"].endswith("film.dcm")]
    assert dicom["image"]["format"] == "dicom"
    written = "".join(p.read_text() for p in first_run.prefix.parent.glob("*.jsonl"))
    assert not [secret for secret in SECRETS if secret in written]


def test_a_pattern_that_matches_nothing_exits_2(score_archive, tmp_path: Path):
    done = score_archive("--input", f"{tmp_path}/nothing-*.png", prefix=tmp_path / "out")
    assert done.returncode == 2
    assert "matches no file" in done.stderr


def test_an_unreadable_model_fails_before_the_pipeline_starts(score_archive, archive: Path, tmp_path: Path):
    model = tmp_path / "broken.keras"
    model.write_bytes(b"")
    (tmp_path / "broken.json").write_text("{not json")
    done = score_archive("--input", f"{archive}/*.png", "--model", str(model), prefix=tmp_path / "out")
    assert done.returncode == 2
    assert "cannot load the model" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.glob("out-*"))


def test_a_run_with_another_shard_count_removes_the_earlier_shards(score_archive, tmp_path: Path):
    prefix = tmp_path / "out" / "scores"
    for shards in ("3", "2"):
        done = score_archive("--input", f"{SAMPLES}/*.jpg", "--shards", shards, prefix=prefix)
        assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in prefix.parent.iterdir())
    assert names == [
        f"scores-{kind}-0000{i}-of-00002.jsonl" for kind in ("errors", "results") for i in (0, 1)
    ]
    assert "removed" in done.stderr and "-of-00003.jsonl (an earlier run's shard)" in done.stderr
    assert len(Run(0, "", prefix).lines("results")) == len(list(SAMPLES.glob("*.jpg")))
