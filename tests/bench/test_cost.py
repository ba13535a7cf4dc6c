"""What the benchmark charges: CPU of a process tree from /proc, FLOPs from a model's shapes, the GEMM-peak
limit, the load generator's pinning and its wrk script, and the README section rendered from the results.
No timed assertion: CPU time is asserted as CPU time, never against a wall clock."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import cost  # noqa: E402
import readme  # noqa: E402

sys.path.remove(str(ROOT / "bench"))


# -- FLOPs: the formula against torch's own FLOP counter ---------------------------------------------------

@pytest.mark.parametrize("head", ["none", "mlm", "classifier"])
@pytest.mark.parametrize("tokens", [1, 7, 40])
def test_flops_match_torchs_flop_counter(head, tokens):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel

    config = BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=112, num_labels=1, attn_implementation="eager")
    model = {"none": lambda: BertModel(config, add_pooling_layer=False), "mlm": lambda: BertForMaskedLM(config),
             "classifier": lambda: BertForSequenceClassification(config)}[head]().eval()
    ids = torch.randint(5, 90, (1, tokens))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    shapes = cost.Shapes(layers=3, hidden=48, intermediate=112, heads=4, vocab=97, head=head)
    assert cost.flops(shapes, tokens)["total"] == counter.get_total_flops()


def test_flops_per_input_averages_each_inputs_own_square():
    shapes = cost.Shapes(layers=1, hidden=8, intermediate=16, heads=2, vocab=0, head="none")
    mean = cost.flops_per_input(shapes, [2, 10])
    assert mean["attention"] == (cost.flops(shapes, 2)["attention"] + cost.flops(shapes, 10)["attention"]) / 2
    assert mean["attention"] > cost.flops(shapes, 6)["attention"]  # not the square of the mean


def test_shapes_come_from_the_models_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 6, "hidden_size": 384,
                                                      "intermediate_size": 1536, "num_attention_heads": 12,
                                                      "vocab_size": 30522}))
    assert cost.Shapes.of(tmp_path, "sparse_embedding") == cost.Shapes(6, 384, 1536, 12, 30522, "mlm")
    assert cost.Shapes.of(tmp_path, "rerank").head == "classifier"
    assert cost.Shapes.of(tmp_path, "text_embedding").head == "none"


def test_utilisation_against_fp32_and_a_mixed_int8_limit():
    per_input = {"projections": 6e9, "ffn_out": 2e9, "attention": 1e9, "head": 1e9, "total": 10e9}
    fp32 = cost.utilisation(5, per_input, peak_fp32=100e9)
    assert fp32 == {"achieved_gflops": 50.0, "peak_gflops": 100.0, "utilisation": 0.5}
    # int8 at 4x: the 6 quantized GFLOP take 0.015 s at peak, the 4 fp32 ones 0.04 s: limit 10e9 / 0.055 s
    mixed = cost.utilisation(5, per_input, peak_fp32=100e9, peak_int8=400e9)
    assert mixed["peak_gflops"] == pytest.approx(10 / 0.055, abs=0.01)
    assert mixed["utilisation"] == pytest.approx(50 / (10 / 0.055), abs=0.001)


# -- pinning --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cpus, taskset, server, generator, note", [
    ([0, 1], True, None, None, "not pinned: 2 cores"),
    ([0], True, None, None, "not pinned: 1 cores"),
    ([0, 1, 2, 3], False, None, None, "not pinned: no taskset"),
    ([0, 1, 2], True, (0, 1), (2,), "load generator on CPU 2"),
    ([4, 5, 6, 7], True, (4, 5, 6), (7,), "load generator on CPU 7"),
])
def test_the_load_generator_gets_its_own_core_from_three_cores_on(cpus, taskset, server, generator, note):
    plan = cost.plan_pinning(cpus, taskset)
    assert (plan.server, plan.load_generator) == (server, generator)
    assert plan.note.startswith(note)
    if generator:
        assert not set(plan.server) & set(plan.load_generator)
        assert plan.describe()["load_generator_cpus"] == list(generator)


# -- CPU of a process tree ---------------------------------------------------------------------------------

BURN = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
PARENT = f"""
import subprocess, sys
BURN = {BURN!r}
MIDDLE = "import subprocess, sys; subprocess.run([sys.executable, '-c', " + repr(BURN + "print('done', flush=True)\\nsys.stdin.read()") + "])"
live = []
for line in sys.stdin:
    if line.strip() == "exit":  # a child that starts, burns 0.4 s of CPU, exits and is reaped
        subprocess.run([sys.executable, "-c", BURN], check=True)
        print("done", flush=True)
    else:  # a grandchild that burns 0.4 s of CPU, prints "done" and stays alive, blocked on its stdin
        live.append(subprocess.Popen([sys.executable, "-c", MIDDLE], stdin=subprocess.PIPE))
"""


@pytest.mark.slow
def test_tree_cpu_counts_a_child_that_exited_and_nothing_outside_the_tree():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.pid in cost.tree(parent.pid)
        with cost.CpuMeter(parent.pid) as meter:
            parent.stdin.write("exit\n")
            parent.stdin.flush()
            assert parent.stdout.readline().strip() == "done"
        # The child was gone before the second reading: its 0.4 s count through the parent's cutime/cstime.
        assert meter.seconds >= 0.4 - 2 / cost.CLK_TCK
        assert meter.root_seconds < 0.2  # the root's own share (the gateway's, for a server): it only waited
        with cost.CpuMeter(parent.pid) as live:
            parent.stdin.write("live\n")
            parent.stdin.flush()
            assert parent.stdout.readline().strip() == "done"
        # A grandchild still running at the second reading is found by walking the tree.
        assert len(cost.tree(parent.pid)) == 3 and live.seconds >= 0.4 - 2 / cost.CLK_TCK
        # This process burns CPU while the tree waits on its stdin: none of it is the tree's.
        with cost.CpuMeter(parent.pid) as idle:
            t = time.process_time()
            while time.process_time() - t < 0.4:
                pass
        assert idle.seconds < 0.2
    finally:
        descendants = cost.tree(parent.pid)
        parent.kill()
        parent.wait()
        for pid in descendants[1:]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_memory_and_load_readings_of_this_process():
    mem = cost.memory(os.getpid())
    assert mem["processes"] >= 1 and 0 < mem["pss_mb"] <= mem["rss_mb"]
    assert len(cost.loadavg()) == 3
    assert cost.per_thousand(2.0, 500) == 4.0 and cost.per_thousand(None, 500) is None


# -- the wrk script, run by a Lua interpreter with wrk's API stood in -------------------------------------------

def test_wrk_script_sends_every_body_in_turn_to_the_path(tmp_path):
    lupa = pytest.importorskip("lupa")
    bodies = [{"input": [f"text {i}"]} for i in range(3)]
    (tmp_path / "bodies.jsonl").write_text("\n".join(json.dumps(b) for b in bodies) + "\n")
    lua = lupa.LuaRuntime()
    lua.execute("wrk = {format = function(method, path, headers, body) "
                "return method .. ' ' .. path .. ' ' .. headers['Content-Type'] .. ' ' .. body end}")
    lua.execute((ROOT / "bench" / "wrk" / "post.lua").read_text())
    lua.globals().init(lua.table_from([str(tmp_path / "bodies.jsonl"), "/_inference/text_embedding/x"]))
    sent = [lua.globals().request() for _ in range(6)]
    assert all(s.startswith("POST /_inference/text_embedding/x application/json ") for s in sent)
    got = [json.loads(s.split("application/json ", 1)[1]) for s in sent]
    assert sorted(map(json.dumps, got[:3])) == sorted(map(json.dumps, bodies)) and got[:3] == got[3:]


# -- README: its benchmark figures are the rendering of the committed results -----------------------------------

def test_readme_benchmark_section_is_the_rendering_of_the_committed_results():
    report = json.loads((ROOT / "bench" / "results" / "benchmark.json").read_text())
    text = (ROOT / "README.md").read_text()
    assert text.count(readme.BEGIN) == 1 and text.count(readme.END) == 1
    assert readme.section(report) in text


def test_readme_write_replaces_only_the_generated_section(tmp_path):
    report = json.loads((ROOT / "bench" / "results" / "benchmark.json").read_text())
    target = tmp_path / "README.md"
    target.write_text(f"# Title\n\nbefore\n\n{readme.BEGIN}\nstale figures\n{readme.END}\n\nafter\n")
    assert readme.write(target, report)
    text = target.read_text()
    assert text.startswith("# Title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "stale" not in text and readme.section(report) in text
    assert not readme.write(target, report)  # a second write changes nothing


def test_rendering_marks_each_target_met_or_missed():
    report = json.loads((ROOT / "bench" / "results" / "benchmark.json").read_text())
    report["targets"] = [
        {"row": "a/short", "target": "server CPU per input ÷ in-process", "value": 1.2, "op": "<=", "limit": 1.1,
         "met": False},
        {"row": "a/passage", "target": "server CPU per input ÷ in-process", "value": 1.01, "op": "<=",
         "limit": 1.03, "met": True}]
    table = readme.target_list(report)
    assert "| a / short | server CPU per input ÷ in-process <= 1.1 | 1.2 | **missed** |" in table
    assert "| a / passage | server CPU per input ÷ in-process <= 1.03 | 1.01 | met |" in table


def test_a_failing_optional_phase_is_recorded_not_fatal():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import run
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert run.phase("memory", lambda: {"ok": 1}) == {"ok": 1}
    failed = run.phase("memory", lambda: 1 / 0)
    assert "ZeroDivisionError" in failed["error"]
    report = {"results": {}, "memory": failed}
    assert run.targets(report) == [{"row": "memory", "target": "extra allocation ÷ first (PSS)", "value": None,
                                    "op": "<=", "limit": 0.5, "met": None}]
