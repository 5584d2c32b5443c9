"""What the built images carry: their user, entrypoint and packages (docs/images.md says the
same to users).

Why: the Dockerfile checks of tests/chart read the Dockerfiles; these read the images. A worker
image that picked up the operator's dependencies, an operator image without the `kubernetes`
package it logs in with, or a user that is not numeric would show only here.
"""

from __future__ import annotations

import json

import pytest

from container_engine import Engine, Images

pytestmark = pytest.mark.containers

OPERATOR_ONLY = {"kopf", "aiohttp", "kubernetes", "pyyaml"}


def config(engine: Engine, image: str) -> dict[str, object]:
    found: dict[str, object] = json.loads(engine("image", "inspect", image).stdout)[0]["Config"]
    return found


def packages(engine: Engine, image: str) -> set[str]:
    code = "import importlib.metadata as m; print(*(d.metadata['Name'] for d in m.distributions()))"
    done = engine("run", "--rm", "--network", "host", "--entrypoint", "python", image, "-c", code)
    return {name.lower().replace("_", "-") for name in done.stdout.split()}


@pytest.mark.parametrize("name", ["worker", "operator", "example"])
def test_runs_as_the_numeric_non_root_user(engine: Engine, images: Images, name: str) -> None:
    assert config(engine, getattr(images, name))["User"] == "65532:65532"


def test_the_worker_image_has_the_runtime_and_none_of_the_operators_dependencies(
    engine: Engine, images: Images
) -> None:
    found = config(engine, images.worker)
    assert (found["Entrypoint"], found["WorkingDir"]) == (["aq", "worker"], "/app")
    assert "PYTHONPATH=/app" in str(found["Env"])
    installed = packages(engine, images.worker)
    assert {"atomicqueues", "redis", "hiredis", "pydantic", "prometheus-client"} <= installed
    assert not installed & OPERATOR_ONLY, installed & OPERATOR_ONLY
    assert not {"pip", "setuptools", "wheel"} & installed  # nothing of the build is left


def test_the_operator_image_runs_aq_operator(engine: Engine, images: Images) -> None:
    found = config(engine, images.operator)
    assert found["Entrypoint"] == ["aq"]
    assert found["Cmd"] == ["operator", "--listen", "0.0.0.0:8080"]
    assert OPERATOR_ONLY | {"atomicqueues"} <= packages(engine, images.operator)
    done = engine("run", "--rm", "--network", "host", images.operator, "operator", "--help")
    assert "--leader-elect" in done.stdout
    # what the operator's login imports (the image leaves out kubernetes.aio, which it never does)
    code = "import kopf, kubernetes.config, aq_operator.login; print('ok')"
    done = engine(
        "run", "--rm", "--network", "host", "--entrypoint", "python", images.operator, "-c", code
    )
    assert done.stdout.strip() == "ok", done.stdout + done.stderr


def test_the_example_image_serves_its_handlers(engine: Engine, images: Images) -> None:
    assert "AQ_HANDLERS=accounts:registry" in str(config(engine, images.example)["Env"])
    code = "import accounts; print(sorted(accounts.registry))"
    done = engine(
        "run", "--rm", "--network", "host", "--entrypoint", "python", images.example, "-c", code
    )
    assert "record" in done.stdout
