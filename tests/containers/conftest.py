"""Fixtures of the container tier: the images, the engine, a handler image of the tests.

The images are built once per session by scripts/build-images.sh (about 1 s when up to date;
from a clean cache, where no registry is reachable, about 4 minutes with the stand-in base).
Where no container engine can be had, every test here is skipped with a loud reason (repeated
at the end of the run); with CI set, that is a failure instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from engine import REPO_ROOT, Engine, EngineMissing, Images, build_images

from go_tools import skip_or_fail

TIER = "CONTAINER TIER (tier 5)"


@pytest.fixture(scope="session")
def images() -> Images:
    try:
        return build_images()
    except EngineMissing as exc:
        reason = str(exc)
    skip_or_fail(TIER, reason)  # outside the except: no exception chain in the report


@pytest.fixture(scope="session")
def engine(images: Images) -> Engine:
    """The engine, once a container of the worker image has run here."""
    found = Engine(images.engine)
    done = found("run", "--rm", "--network", "host", images.worker, "--help", check=False)
    if done.returncode != 0:
        skip_or_fail(TIER, f"a container cannot run here: {done.stderr.strip()[-500:]}")
    return found


@pytest.fixture(scope="session")
def handler_image(engine: Engine, images: Images) -> str:
    """The worker image plus tests/runtime/handlers.py (tests/containers/Dockerfile)."""
    return engine.build(
        images.worker.replace("/worker:", "/test-handlers:"),
        REPO_ROOT / "tests" / "runtime",
        REPO_ROOT / "tests" / "containers" / "Dockerfile",
        BASE_IMAGE=images.worker,
    )


@pytest.fixture
def containers(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Engine]:
    """The engine, for a test: what it started is removed at the end (and its output printed
    when the test failed)."""
    failed = request.session.testsfailed
    yield engine
    if request.session.testsfailed > failed:
        print(engine.report(), file=sys.stderr)
    engine.remove_all()
