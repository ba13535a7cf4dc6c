"""The benchmark harness runs end to end in a tiny configuration (the figures themselves live in bench/results)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_benchmark_quick(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-P", str(ROOT / "bench" / "run.py"), "--quick", "--no-infinity",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"text_embedding/short", "rerank/short"}
    for result in report["results"].values():
        assert result["in_process"]["inputs_per_s"] > 0
        assert all(level["errors"] == 0 and level["requests"] > 0 for level in result["http"])
        assert result["half_load"]["errors"] == 0 and result["half_load"]["requests"] > 0
        assert result["ratio_http_to_in_process"] > 0 and result["tokens_per_input"] > 1
    assert report["results"]["rerank/short"]["http"][0]["inputs_per_s"] == pytest.approx(
        8 * report["results"]["rerank/short"]["http"][0]["requests_per_s"], rel=0.01)
    assert report["machine"]["cores"] >= 1
    assert "text_embedding/short" in report["targets"]


def test_autoscale_step_quick(tmp_path):
    out = tmp_path / "step.json"
    proc = subprocess.run([sys.executable, "-P", str(ROOT / "bench" / "autoscale_step.py"), "--quick",
                           "--heavy-s", "12", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["requests"] > 0 and report["requests_failed"] == 0
    assert report["seconds_from_step_to_decision"] is not None


def test_readme_shows_the_committed_results():
    """The README's benchmark table is rendered from bench/results, not typed by hand."""
    proc = subprocess.run([sys.executable, "-P", str(ROOT / "bench" / "run.py"), "--table",
                           str(ROOT / "bench" / "results" / "benchmark.json")], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() in (ROOT / "README.md").read_text()
