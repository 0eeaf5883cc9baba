"""The archive pipeline's fixtures: a generated archive of films and bad files, and the pipeline run in
.venv-beam (Beam's own environment, `make beam-install`) as a subprocess."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.imaging.test_dicom import build, from_sample

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLES = ROOT / "tests" / "samples"
BEAM_CLI = ROOT / ".venv-beam" / "bin" / "covidxray"
#: the bad files and the error code each must get
BAD = {
    "truncated.png": "invalid_image",
    "notes.jpg": "unsupported_type",
    "ct-slice.dcm": "unsupported_modality",
    "empty.png": "missing_image",
}


@dataclass
class Run:
    """One pipeline run: its exit code, stderr and output prefix."""

    returncode: int
    stderr: str
    prefix: Path

    def lines(self, kind: str) -> list[dict]:
        """Every JSON line of the `kind` (results or errors) shards."""
        shards = sorted(self.prefix.parent.glob(f"{self.prefix.name}-{kind}-*.jsonl"))
        return [json.loads(line) for shard in shards for line in shard.read_text().splitlines()]


def _variants(path: Path) -> dict[str, bytes]:
    """Four different films from one sample: JPEG as shipped, grey PNG, mirrored GIF, smaller cropped JPEG."""
    img = Image.open(path).convert("L")
    out: dict[str, bytes] = {path.name: path.read_bytes()}
    for name, picture, fmt in (
        (f"{path.stem}.png", img, "PNG"),
        (f"{path.stem}-mirror.gif", ImageOps.mirror(img), "GIF"),
        (f"{path.stem}-crop.jpg", img.crop((8, 8, img.width - 8, img.height - 8)).resize((200, 210)), "JPEG"),
    ):
        buffer = io.BytesIO()
        picture.save(buffer, fmt)
        out[name] = buffer.getvalue()
    return out


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """28 films from the samples, a DICOM radiograph (with identifiers in it), a copy of one film under
    another name, and the bad files of BAD."""
    folder = tmp_path_factory.mktemp("archive")
    samples = sorted(SAMPLES.glob("*.jpg"))
    for sample in samples:
        for name, data in _variants(sample).items():
            (folder / name).write_bytes(data)
    (folder / "film.dcm").write_bytes(from_sample(samples[0].read_bytes(), "12-bit MONOCHROME1"))
    (folder / "zz-copy-of-first.jpg").write_bytes(samples[0].read_bytes())
    png = (folder / f"{samples[1].stem}.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "notes.jpg").write_text("not a radiograph, just notes\n")
    (folder / "ct-slice.dcm").write_bytes(build(np.zeros((96, 96), np.uint16), Modality="CT"))
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="session")
def score_archive() -> Callable[..., Run]:
    """Runs `covidxray score-archive` of .venv-beam (skips when it is not installed)."""
    if not BEAM_CLI.exists():
        pytest.skip("the archive pipeline's environment is missing: run `make beam-install`")

    def run(*args: str, prefix: Path, env: dict[str, str] | None = None) -> Run:
        done = subprocess.run(
            [str(BEAM_CLI), "score-archive", "--output", str(prefix), *args],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        return Run(done.returncode, done.stderr, prefix)

    return run


@pytest.fixture(scope="session")
def first_run(
    archive: Path, score_archive: Callable[..., Run], tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """The pipeline over the whole archive, with the DirectRunner."""
    prefix = tmp_path_factory.mktemp("out") / "scores"
    done = score_archive("--input", f"{archive}/*", "--shards", "3", prefix=prefix)
    assert done.returncode == 0, done.stderr
    return done
