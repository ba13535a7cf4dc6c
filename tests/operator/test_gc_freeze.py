"""The long-lived heaps are frozen out of the garbage collector's reach (issue 16): a full collection walked the
gateway's ~65,000 startup objects in 55-85 ms and a loaded worker's ~420,000 in 0.25-0.5 s, stalling every
request in flight. Each process says how many objects it froze in its /metrics."""

from __future__ import annotations

import contextlib
import gc
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import free_port

from infernetes.worker.modelstore import ModelStore

EXE = Path(sys.executable).with_name("infernetes")


def frozen(metrics: str, name: str) -> float:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_the_gateway_freezes_its_startup_heap(tmp_path):
    from infernetes.operator.embedded import EmbeddedOptions, build_app

    gc.unfreeze()  # what another test's app froze in this process must not count
    with TestClient(build_app(tmp_path / "data", EmbeddedOptions())) as client:
        assert frozen(client.get("/metrics").text, "infernetes_gateway_gc_frozen_objects") > 10_000


@pytest.mark.slow
def test_a_worker_freezes_its_heap_once_the_model_is_ready(tmp_path, tiny_model_dir):
    info = ModelStore(tmp_path / "models").import_folder(tiny_model_dir, "tiny")
    port = free_port()
    proc = subprocess.Popen([str(EXE), "worker", "--model-dir", str(info.path), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        value = 0.0
        while value == 0.0:  # ready first, then frozen: the worker freezes right after it reports ready
            assert proc.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker never froze its heap"
            with contextlib.suppress(httpx.HTTPError):
                value = frozen(httpx.get(url + "/metrics", timeout=5).text, "infernetes_gc_frozen_objects")
            time.sleep(0.1)
        assert value > 50_000  # torch, transformers and the model's modules
    finally:
        proc.terminate()
        proc.wait(30)
