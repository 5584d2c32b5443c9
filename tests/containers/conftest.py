"""Fixtures of the container tier: the engine for a test (the images, the engine itself and the
tests' handler image are session fixtures of tests/conftest.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from container_engine import Engine


@pytest.fixture
def containers(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Engine]:
    """The engine, for a test: what it started is removed at the end (and its output printed
    when the test failed)."""
    failed = request.session.testsfailed
    yield engine
    if request.session.testsfailed > failed:
        print(engine.report(), file=sys.stderr)
    left = engine.remove_all()
    assert not left, f"containers not removed: {left}"
