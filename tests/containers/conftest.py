"""Fixtures of the container tier: a handler image of the tests, and the engine for a test
(the images and the engine itself are session fixtures of tests/conftest.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from container_engine import REPO_ROOT, Engine, Images


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
