""".circleci/config.yml: valid for CircleCI, and the deploy logic it runs does what it says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".circleci" / "config.yml"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
DEPLOY_JOBS = ("build-image", "deploy", "load-test")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())  # type: ignore[no-any-return]


def commands(config: dict[str, Any], job: str) -> list[str]:
    """The shell commands a job runs, reusable commands expanded, in order."""
    found: list[str] = []
    for step in config["jobs"][job]["steps"]:
        name = step if isinstance(step, str) else next(iter(step))
        if name == "run":
            run = step["run"]
            found.append(run if isinstance(run, str) else run["command"])
        elif name in config.get("commands", {}):
            found += [s["run"]["command"] for s in config["commands"][name]["steps"] if "run" in s]
    return found


def step_command(config: dict[str, Any], job: str, name_prefix: str) -> str:
    (command,) = [
        step["run"]["command"]
        for step in config["jobs"][job]["steps"]
        if isinstance(step, dict) and "run" in step and step["run"].get("name", "").startswith(name_prefix)
    ]
    return command  # type: ignore[no-any-return]


def workflow_jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Workflow entries by job type (their settings; matrix left unexpanded)."""
    (workflow,) = [w for w in config["workflows"].values() if isinstance(w, dict)]
    entries = {}
    for entry in workflow["jobs"]:
        job, settings = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        entries[job] = settings
    return entries


def test_validates_against_circleci_published_schema():
    if not CHECK_JSONSCHEMA.exists():
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    result = subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.circle-ci", str(CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_shell_step_parses(config, tmp_path):
    for job in config["jobs"]:
        for command in commands(config, job):
            script = re.sub(r"<<\s*[\w.\-]+\s*>>", "x", command)
            result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
            assert result.returncode == 0, f"{job}: {result.stderr}\n{script}"


def test_lint_and_test_run_the_make_targets_on_every_branch(config):
    assert config["version"] == 2.1
    assert any(c.strip() == "make lint" for c in commands(config, "lint"))
    assert any(c.strip() == "make test" for c in commands(config, "test"))
    entries = workflow_jobs(config)
    assert "filters" not in entries["lint"] and "filters" not in entries["test"]


def test_only_main_builds_and_deploys_both_services_after_lint_and_test(config):
    entries = workflow_jobs(config)
    for job in DEPLOY_JOBS:
        assert entries[job]["filters"] == {"branches": {"only": "main"}}, job
        assert entries[job]["context"] == "covidxray-gcp", job
    for job in ("build-image", "deploy"):
        assert entries[job]["matrix"]["parameters"]["service"] == ["keras", "automl"]
    assert set(entries["build-image"]["requires"]) == {"lint", "test"}
    assert entries["deploy"]["requires"] == ["build-<< matrix.service >>"]
    assert set(entries["load-test"]["requires"]) == {"deploy-keras", "deploy-automl"}


def test_images_are_built_by_service_and_pushed_to_artifact_registry(config):
    script = "\n".join(commands(config, "build-image"))
    assert "docker build" in script and "--build-arg SERVICE=<< parameters.service >>" in script
    assert re.search(r"\$GCP_REGION-docker\.pkg\.dev/\$GCP_PROJECT_ID/", script)
    assert 'docker push "$IMAGE:$CIRCLE_SHA1"' in script


def test_deploy_smoke_tests_the_tagged_revision_before_moving_traffic(config):
    script = "\n".join(commands(config, "deploy"))
    replace = script.index("gcloud run services replace")
    readyz = script.index('"$TAG_URL/readyz"')
    predict = script.index('"$TAG_URL/api/v1/predict"')
    promote = script.index('gcloud run services update-traffic "$SVC" --to-revisions="$REVISION=100"')
    assert replace < readyz < predict < promote
    assert "Authorization: Bearer $COVIDXRAY_TOKEN" in script
    assert "Roll back with: gcloud run services update-traffic" in script


def test_load_test_runs_locust_headless_against_the_live_urls(config):
    script = "\n".join(commands(config, "load-test"))
    assert re.search(r"locust -f locustfile\.py --headless .*--run-time \d+s", script)
    assert "--format='value(status.url)'" in script


def test_credentials_come_only_from_the_context(config):
    text = CONFIG.read_text()
    assert not re.search(r"PRIVATE KEY|\"type\":\s*\"service_account\"|AIza[0-9A-Za-z_\-]{20}", text)
    for job in config["jobs"].values():  # job environments hold settings, never secrets
        assert set(job.get("environment", {})) <= {"SERVICE", "PYTEST_ADDOPTS"}
    users = {job for job in config["jobs"] if any("gcloud auth" in c for c in commands(config, job))}
    assert users == set(DEPLOY_JOBS)


def render(config: dict[str, Any], tmp_path: Path, service: str, current: dict[str, Any], **env: str):
    """Run the deploy job's render script; return (exit status, service document, rollback, stderr)."""
    command = step_command(config, "deploy", "Deploy a new revision")
    script = re.search(r"<<'PY'\n(.*?)\nPY\n", command, re.DOTALL)
    assert script, "the deploy step has no render script"
    (tmp_path / "current.json").write_text(json.dumps(current))
    rollback = tmp_path / "rollback"
    environ = {
        "PATH": "/usr/bin:/bin",
        "PROJECT_ID": "acme",
        "REGION": "europe-west1",
        "IMAGE": "europe-west1-docker.pkg.dev/acme/covidxray/x@sha256:" + "0" * 64,
        **env,
    }
    args = [
        str(ROOT / "deploy" / f"{service}.yaml"),
        str(tmp_path / "current.json"),
        "rev-new",
        "sha-1",
        str(rollback),
    ]
    result = subprocess.run(
        [sys.executable, "-", *args], input=script.group(1), capture_output=True, text=True, env=environ
    )
    doc = yaml.safe_load(result.stdout) if result.returncode == 0 else None
    return result.returncode, doc, rollback.read_text() if rollback.exists() else None, result.stderr


def test_a_new_revision_gets_its_tag_and_no_traffic(config, tmp_path):
    current = {
        "status": {
            "traffic": [
                {"revisionName": "rev-old", "percent": 100, "latestRevision": True},
                {"revisionName": "rev-older", "tag": "sha-0", "url": "https://sha-0---x.run.app"},
            ]
        }
    }
    status, doc, rollback, stderr = render(config, tmp_path, "keras", current)
    assert status == 0, stderr
    assert doc["spec"]["template"]["metadata"]["name"] == "rev-new"
    assert doc["spec"]["traffic"] == [
        {"revisionName": "rev-old", "percent": 100},
        {"revisionName": "rev-new", "tag": "sha-1", "percent": 0},
    ]
    assert rollback == "rev-old=100"
    annotations = doc["spec"]["template"]["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"  # still a string once dumped
    assert doc["spec"]["template"]["spec"]["containers"][0]["image"].endswith("@sha256:" + "0" * 64)


def test_a_traffic_split_is_kept_as_it_is(config, tmp_path):
    current = {
        "status": {
            "traffic": [
                {"revisionName": "rev-a", "percent": 90},
                {"revisionName": "rev-b", "percent": 10, "tag": "canary"},
            ]
        }
    }
    status, doc, rollback, stderr = render(config, tmp_path, "keras", current)
    assert status == 0, stderr
    assert doc["spec"]["traffic"][:2] == [
        {"revisionName": "rev-a", "percent": 90},
        {"revisionName": "rev-b", "percent": 10},
    ]
    assert rollback == "rev-a=90,rev-b=10"


def test_the_first_deploy_serves_the_new_revision(config, tmp_path):
    status, doc, rollback, stderr = render(
        config, tmp_path, "automl", {}, AUTOML_LOCATION="us-central1", AUTOML_ENDPOINT_ID="42"
    )
    assert status == 0, stderr
    assert doc["spec"]["traffic"] == [{"revisionName": "rev-new", "tag": "sha-1", "percent": 100}]
    assert rollback == ""


def test_a_missing_deploy_value_stops_the_deploy(config, tmp_path):
    status, doc, _, stderr = render(config, tmp_path, "automl", {})
    assert status != 0 and "AUTOML_LOCATION" in stderr and doc is None
