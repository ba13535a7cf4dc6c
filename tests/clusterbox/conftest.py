"""Fixtures of the box's own tests: a fresh box per test (it starts in milliseconds), an admin
client, the project's real CRDs, and the real kubectl pointed at the box."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clusterbox import ClusterBox
from clusterbox.fixtures import create_crds

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
KUBECTL = "/usr/bin/kubectl"


@pytest.fixture
def box() -> Iterator[ClusterBox]:
    # The API server's own semantics, without controllers writing status between a test's requests.
    b = ClusterBox(bookmark_interval=0.3, controllers=False).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def api(box: ClusterBox) -> Iterator[httpx.Client]:
    with box.client() as c:
        yield c


@pytest.fixture
def crds(api: httpx.Client) -> list[dict[str, Any]]:
    """The project's CRDs, created through the API as kubectl would."""
    return create_crds(api)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def kubectl(box: ClusterBox, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")
    config = box.write_kubeconfig(tmp_path / "kubeconfig")
    cache = tmp_path / "kube-cache"

    def run(*args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([KUBECTL, "--kubeconfig", str(config), "--cache-dir", str(cache), *args], input=input,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r
    run.kubeconfig = config  # type: ignore[attr-defined]
    return run
