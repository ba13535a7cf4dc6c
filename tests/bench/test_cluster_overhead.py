"""The cluster-overhead benchmark's pure parts (its summary and the gateway ÷ direct verdict, the pids read from a
box pod's status), the wrk script's extra headers, and the README block rendered from the committed results.
No timed assertion: the figures are made-up windows or the committed file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import cluster_overhead  # noqa: E402
import readme  # noqa: E402

sys.path.remove(str(ROOT / "bench"))


def window(requests: int, seconds: float, p50: float, p99: float, gateway: float, worker: float,
           errors: int = 0) -> dict:
    return {"requests": requests, "seconds": seconds, "errors": errors, "p50_ms": p50, "p99_ms": p99,
            "cpu_s": {"gateway": gateway, "worker": worker}}


def test_a_side_is_pooled_over_its_windows():
    s = cluster_overhead.summarise([window(900, 10.0, 20, 40, 2.0, 5.0), window(300, 5.0, 30, 90, 1.0, 4.0, errors=2),
                                    window(1200, 15.0, 10, 50, 3.0, 9.0)])
    assert s["requests"] == 2400 and s["seconds"] == 30.0 and s["errors"] == 2
    assert s["requests_per_s"] == 80.0  # total requests over total seconds, not the mean of the windows' rates
    assert (s["p50_ms"], s["p99_ms"]) == (20, 50)  # medians of the windows
    assert s["cpu_s_per_1000_requests"] == {"gateway": 2.5, "worker": 7.5}


@pytest.mark.parametrize(("gateway_requests", "met"), [(900, True), (899, False), (1100, True)])
def test_the_ratio_is_gateway_over_direct_against_the_target(gateway_requests, met):
    gateway = [window(gateway_requests, 10.0, 20, 40, 2.0, 5.0)]
    direct = [window(1000, 10.0, 20, 40, 0.0, 5.0)]
    out = cluster_overhead.compare(gateway, direct, target=0.9)
    assert out["ratio_gateway_to_direct"] == round(gateway_requests / 1000, 3)
    assert out["target"] == {"op": ">=", "limit": 0.9, "met": met}


def test_each_rounds_pair_has_its_own_ratio():
    out = cluster_overhead.compare([window(500, 10.0, 1, 1, 0, 0), window(900, 10.0, 1, 1, 0, 0)],
                                   [window(1000, 10.0, 1, 1, 0, 0), window(600, 5.0, 1, 1, 0, 0)])
    assert out["ratio_per_round"] == [0.5, 0.75]
    assert out["ratio_gateway_to_direct"] == round(70 / (1600 / 15), 3)


def test_the_cost_ratio_charges_the_gateways_cpu_to_the_gateway_route():
    out = cluster_overhead.compare([window(1000, 10.0, 1, 1, 2.0, 9.0)], [window(1000, 10.0, 1, 1, 0.1, 8.8)])
    # straight: 8.8 CPU-s of the worker per 1,000; through: 9.0 of the worker + 2.0 of the gateway (the gateway's
    # idle CPU during the direct windows is not the direct route's cost)
    assert out["cost_ratio_direct_to_gateway"] == 0.8


def test_no_request_answered_is_not_measured():
    out = cluster_overhead.compare([window(0, 10.0, 0, 0, 0, 0)], [window(1000, 10.0, 1, 1, 0, 0)])
    assert out["ratio_gateway_to_direct"] is None and out["target"]["met"] is None


def test_pids_come_from_the_running_containers_of_a_box_pod():
    pod = {"status": {"containerStatuses": [
        {"name": "a", "containerID": "box://4242", "state": {"running": {"startedAt": "x"}}},
        {"name": "b", "containerID": "box://77", "state": {"terminated": {"exitCode": 0}}},
        {"name": "c", "containerID": "box://uid/c/0", "state": {"running": {}}},
        {"name": "d", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    assert cluster_overhead.pod_pids(pod) == [4242]


def test_wrk_script_sends_the_extra_arguments_as_headers(tmp_path):
    lupa = pytest.importorskip("lupa")
    (tmp_path / "bodies.jsonl").write_text(json.dumps({"input": ["x"]}) + "\n")
    lua = lupa.LuaRuntime()
    lua.execute("wrk = {format = function(method, path, headers, body) local names = {} "
                "for k, v in pairs(headers) do names[#names + 1] = k .. '=' .. v end table.sort(names) "
                "return table.concat(names, ';') end}")
    lua.execute((ROOT / "bench" / "wrk" / "post.lua").read_text())
    lua.globals().init(lua.table_from([str(tmp_path / "bodies.jsonl"), "/infer", "Authorization: Bearer s3cr:t",
                                       "X-Other:1"]))
    assert lua.globals().request() == "Authorization=Bearer s3cr:t;Content-Type=application/json;X-Other=1"
    with pytest.raises(lupa.LuaError, match="not a header"):
        lua.globals().init(lua.table_from([str(tmp_path / "bodies.jsonl"), "/infer", "no colon"]))


def test_readme_holds_the_rendering_of_the_committed_cluster_results():
    report = json.loads(readme.CLUSTER_RESULTS.read_text())
    text = (ROOT / "README.md").read_text()
    assert text.count(readme.CLUSTER_BEGIN) == 1 and text.count(readme.CLUSTER_END) == 1
    assert readme.cluster_section(report) in text
    block = readme.cluster_overhead(report)
    assert f"×{report['ratio_gateway_to_direct']:.2f}" in block and ("met" in block or "missed" in block)


def test_write_cluster_replaces_only_its_own_block(tmp_path):
    report = json.loads(readme.CLUSTER_RESULTS.read_text())
    target = tmp_path / "README.md"
    target.write_text(f"{readme.BEGIN}\nkept\n{readme.END}\n\n{readme.CLUSTER_BEGIN}\nstale\n{readme.CLUSTER_END}\nafter\n")
    assert readme.write_cluster(target, report)
    text = target.read_text()
    assert "kept" in text and "stale" not in text and text.endswith(f"{readme.CLUSTER_END}\nafter\n")
    assert not readme.write_cluster(target, report)


def test_py_spy_stacks_are_summarised_by_self_and_inclusive_shares():
    raw = ("<module> (serve.py:1);run (asyncio/base_events.py:10);handle (gateway.py:5);dumps (json.py:3) 6\n"
           "<module> (serve.py:1);run (asyncio/base_events.py:10);handle (gateway.py:7) 2\n"
           "<module> (serve.py:1);run (asyncio/base_events.py:12);select (selectors.py:9) 2\n"
           "garbage line\n")
    out = cluster_overhead.summarise_stacks(raw, top=3)
    assert out["samples"] == 10
    assert out["self"] == [["dumps (json.py)", 0.6], ["handle (gateway.py)", 0.2], ["select (selectors.py)", 0.2]]
    # a function counts once per stack whatever its lines; the first three are on every stack or 8 of 10
    assert out["inclusive"] == [["<module> (serve.py)", 1.0], ["run (base_events.py)", 1.0],
                                ["handle (gateway.py)", 0.8]]
    assert cluster_overhead.summarise_stacks("") == {"samples": 0, "self": [], "inclusive": []}
