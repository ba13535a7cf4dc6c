"""The official Elasticsearch Python clients (9.x and 8.x) work against the gateway unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("es_client_script.py")
ES8_DIR = Path(sys.prefix) / "es8"


def run_client(url: str, module: str, prefix: str, pythonpath: str | None = None) -> dict:
    env = {**os.environ}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, "-P", str(SCRIPT), url, module, prefix], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def check(out: dict, prefix: str) -> None:
    assert out["info"]["tagline"] == "You Know, for Search"
    assert out["put"]["inference_id"] == f"{prefix}-minilm"
    assert out["put"]["service_settings"]["model_id"] == "minilm"
    assert out["get"]["endpoints"][0]["inference_id"] == f"{prefix}-minilm"
    assert out["dims"] == [384, 384]
    assert out["stats_state"] == "fully_allocated"
    assert out["missing"] == {"status": 404, "type": "resource_not_found_exception"}
    assert out["bad"]["status"] == 400 and "[num_threads] must be a power of 2" in out["bad"]["reason"]
    assert out["delete"] == {"acknowledged": True, "pipelines": []}


def test_elasticsearch_client_9(server):
    out = run_client(server.url, "elasticsearch", "py9")
    assert out["client"].startswith("9.")
    assert out["typed_dims"] == 384
    check(out, "py9")


@pytest.mark.skipif(not ES8_DIR.is_dir(), reason="the 8.x client is installed by `make venv` into .venv/es8")
def test_elasticsearch_client_8(server):
    out = run_client(server.url, "elasticsearch8", "py8", pythonpath=str(ES8_DIR))
    assert out["client"].startswith("8.")
    check(out, "py8")
