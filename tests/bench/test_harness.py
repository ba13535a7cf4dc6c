"""The benchmark harness runs end to end in a tiny configuration (the figures themselves live in bench/results)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_http_vs_inprocess_quick(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-P", str(ROOT / "bench" / "http_vs_inprocess.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert run["in_process"]["texts_per_s"] > 0
    assert all(level["errors"] == 0 and level["requests"] > 0 for level in run["http"])
    assert 0 < run["ratio_http_to_in_process"]
    assert report["machine"]["cores"] >= 1


def test_autoscale_step_quick(tmp_path):
    out = tmp_path / "step.json"
    proc = subprocess.run([sys.executable, "-P", str(ROOT / "bench" / "autoscale_step.py"), "--quick",
                           "--heavy-s", "12", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["requests"] > 0 and report["requests_failed"] == 0
    assert report["seconds_from_step_to_decision"] is not None
