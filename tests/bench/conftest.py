"""The benchmark harness tests start servers (`infernetes serve`, its zygotes and workers, wrk): none may
outlive its test, whether the test passes, fails or times out."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from helpers import TAG_ENV, reap_tagged


@pytest.fixture
def no_process_left(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Tags every process the test starts; after the test, fails it if any of them is still running (and
    kills those). Yields the tag."""
    tag = f"{os.getpid()}:{request.node.nodeid}"
    monkeypatch.setenv(TAG_ENV, tag)
    yield tag
    left = reap_tagged(tag)
    assert not left, f"still running after the test (killed now): {left}"
