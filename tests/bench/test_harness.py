"""The benchmark harness runs end to end in a tiny configuration (the figures themselves live in bench/results)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import kill_process_group, killed_with_parent, reap_tagged, run_process_group, wait_for

ROOT = Path(__file__).resolve().parents[2]
# Every test here is checked for processes it left running (tests/bench/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_process_left")]


def test_benchmark_quick(tmp_path, reranker_dir):
    out = tmp_path / "result.json"
    proc = run_process_group([sys.executable, "-P", str(ROOT / "bench" / "run.py"), "--quick", "--no-infinity",
                              "--reranker", str(reranker_dir), "--out", str(out)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"text_embedding/short", "rerank/short"}
    for result in report["results"].values():
        assert result["in_process"]["inputs_per_s"] > 0
        assert all(level["errors"] == 0 and level["requests"] > 0 for level in result["http"])
        assert result["half_load"]["errors"] == 0 and result["half_load"]["requests"] > 0
        assert result["ratio_http_to_in_process"] > 0 and result["tokens_per_input"] > 1
    # A rerank request carries several documents: inputs are counted from the bodies the load generator sends.
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from run import bodies
    finally:
        sys.path.remove(str(ROOT / "bench"))
    documents = {len(b["input"]) for b in bodies("rerank", "short")}
    assert documents == {report["rerank_documents_per_request"]} and documents != {1}
    level = report["results"]["rerank/short"]["http"][0]
    assert level["inputs_per_s"] == pytest.approx(documents.pop() * level["requests_per_s"], rel=0.01)
    assert report["machine"]["cores"] >= 1 and report["machine"]["memory_mb"] > 0 and report["machine"]["torch"]
    # Which load generator actually ran, and how it was pinned (or why not).
    assert report["load_generator"]["name"] == ("wrk" if shutil.which("wrk") else "aiohttp")
    assert report["pinning"]["note"] and len(report["loadavg_start"]) == len(report["loadavg_end"]) == 3
    # Cost: the server tree's CPU per 1,000 inputs against in-process, and FLOP utilisation, on every row.
    for result in report["results"].values():
        assert all(level["server_cpu_s"] > 0 for level in result["http"])
        assert all(0 < level["gateway_cpu_s"] < level["server_cpu_s"] for level in result["http"])
        assert result["cpu"]["in_process_s_per_1000_inputs"] > 0 and result["cpu"]["server_s_per_1000_inputs"] > 0
        assert result["cpu"]["ratio_server_to_in_process"] == pytest.approx(
            result["cpu"]["server_s_per_1000_inputs"] / result["cpu"]["in_process_s_per_1000_inputs"], abs=0.002)
        assert result["flops_per_input"]["total"] > 0 and 0 < result["utilisation"]["http"]["utilisation"]
        assert result["utilisation"]["server_per_cpu_second"]["utilisation"] > 0
    peak = report["gemm_peak"]
    assert peak["used"]["fp32_torch"] == max(peak["start"]["fp32_torch_running"], peak["end"]["fp32_torch_running"]) > 0
    assert peak["used"]["int8_best"] > 0
    many = report["many_endpoints"]
    assert many["endpoints"] == 2 and many["extra_endpoint_pss_mb"] > 0 and many["idle_cpu_s"] >= 0
    assert many["steps"][1]["processes"] > many["steps"][0]["processes"]
    rows = {t["row"] for t in report["targets"]}
    assert {"text_embedding/short", "rerank/short"} <= rows
    assert all(t["met"] in (True, False) for t in report["targets"])
    cpu_targets = [t for t in report["targets"] if t["target"].startswith("server CPU")]
    assert {t["limit"] for t in cpu_targets} == {1.10}  # short inputs
    # The README section renders from such a file.
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import readme
    finally:
        sys.path.remove(str(ROOT / "bench"))
    section = readme.render(report)
    assert "CPU-seconds per 1,000 inputs" in section and "Many endpoints" in section and "**Targets**" in section


def test_a_killed_benchmark_leaves_no_server_behind(tmp_path):
    """The harness dies by SIGKILL (a CI time-out) while its server runs: the server must not outlive it."""
    bench = subprocess.Popen([sys.executable, "-P", str(ROOT / "bench" / "autoscale_step.py"), "--quick",
                              "--out", str(tmp_path / "step.json")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=killed_with_parent)
    servers: list[psutil.Process] = []
    try:
        harness = psutil.Process(bench.pid)
        deadline = time.monotonic() + 300
        while not servers:
            assert bench.poll() is None and time.monotonic() < deadline, "the benchmark never started its server"
            servers = [c for c in harness.children(recursive=True) if "serve" in c.cmdline()]
            time.sleep(0.1)
        os.kill(bench.pid, signal.SIGKILL)
        bench.wait()
        gone, alive = psutil.wait_procs(servers, timeout=60)
        assert not alive, f"orphaned servers: {[p.cmdline() for p in alive]}"
    finally:
        for server in servers:
            with contextlib.suppress(psutil.Error):
                server.kill()
        kill_process_group(bench.pid)
        bench.wait()


# A harness that fails while its server runs, and that neither stops it nor ties it to itself.
FAILING_HARNESS = """
import subprocess, sys
sys.path.insert(0, sys.argv[1])
from common import EXE, free_port, wait_http
port = free_port()
subprocess.Popen([str(EXE), "serve", "--data-dir", sys.argv[2], "--port", str(port)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wait_http(f"http://127.0.0.1:{port}/")
print("serving", flush=True)
sys.exit("the benchmark failed")
"""


def test_a_harness_that_fails_with_its_server_up_leaves_no_process(tmp_path, no_process_left):
    proc = run_process_group([sys.executable, "-P", "-c", FAILING_HARNESS, str(ROOT / "bench"), str(tmp_path)],
                             timeout=300)
    assert proc.returncode == 1 and proc.stdout.strip() == "serving", proc.stderr[-3000:]
    assert not reap_tagged(no_process_left), "the failed harness's server outlived it"


def test_the_check_finds_a_detached_process_and_kills_it(no_process_left):
    # The sleep is reparented to init once the shell exits. Checked only once it is `sleep`: between the shell's
    # fork and the exec, /proc shows neither its final command line nor, for a moment, its environment.
    shell = ["setsid", "sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"]  # the sleep must not hold our pipe
    pid = int(subprocess.run(shell, check=True, capture_output=True, text=True).stdout)
    wait_for(lambda: psutil.Process(pid).cmdline()[:1] == ["sleep"], timeout=30, interval=0.01,
             what="the detached sleep to start")
    assert reap_tagged(no_process_left, ceiling=0) == ["sleep 600"]
    assert not reap_tagged(no_process_left, ceiling=0)


def test_autoscale_step_quick(tmp_path):
    out = tmp_path / "step.json"
    proc = run_process_group([sys.executable, "-P", str(ROOT / "bench" / "autoscale_step.py"), "--quick",
                              "--heavy-s", "12", "--out", str(out)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["requests"] > 0 and report["requests_failed"] == 0
    assert report["seconds_from_step_to_decision"] is not None


def test_readme_shows_the_committed_resilience_figures():
    """The README's reliability table is rendered from bench/results/resilience.json, not typed by hand."""
    proc = subprocess.run([sys.executable, "-P", str(ROOT / "bench" / "resilience_table.py"),
                           str(ROOT / "bench" / "results" / "resilience.json")], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.count("\n") > 8 and proc.stdout.strip() in (ROOT / "README.md").read_text()
