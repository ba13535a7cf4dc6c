"""What the benchmark charges each result: CPU time and memory of the server's processes read from /proc, the
model's FLOPs from its shapes, and the machine's measured GEMM peak.

- CPU: utime + stime (+ cutime + cstime, so a child that exits during a phase is still counted, by its parent)
  of every process in a tree (`infernetes serve`: gateway, zygotes, workers), found by walking /proc's parent
  links; the load generator is not a descendant of the server, so it is never counted.
- Memory: Pss and Rss from /proc/<pid>/smaps_rollup, summed over the same tree.
- FLOPs: the matrix products of a BERT-style encoder (2 x multiply-adds) plus its attention products, per input
  of a measured token count; ``tests/bench`` checks the formula against torch's own FLOP counter.
- Peak: a large matmul at the benchmark's threads and dtype (fp32 torch; int8 torch._int_mm and ONNX Runtime's
  MatMulInteger), measured in the run that uses it.

Pure functions on top of small readers; nothing here starts a server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ------------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: the command name may hold spaces and parentheses."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def tree(root: int) -> list[int]:
    """``root`` and all its descendants, by the parent pid of every process in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat_fields(pid) is not None:
            out.append(pid)
            todo.extend(children.get(pid, []))
    return out


def cpu_ticks(root: int) -> int:
    """CPU clock ticks used so far by ``root``'s tree: each process's own time plus its reaped children's.
    The difference of two readings is the tree's CPU in between, even when a process exits in between
    (its time moves into its parent's cutime/cstime) or starts (it counts from zero)."""
    total = 0
    for pid in tree(root):
        fields = _stat_fields(pid)
        if fields is not None:  # utime stime cutime cstime are fields 14-17, here 11-14
            total += sum(int(v) for v in fields[11:15])
    return total


def own_ticks(pid: int) -> int:
    """CPU clock ticks of ``pid`` itself (utime + stime), without its children."""
    fields = _stat_fields(pid)
    return sum(int(v) for v in fields[11:13]) if fields is not None else 0


class CpuMeter:
    """CPU seconds of a process tree over a phase: ``with CpuMeter(pid) as m: ...; m.seconds``; ``m.root_seconds``
    is the root's own share (for `infernetes serve`: the gateway; the rest is zygotes and workers)."""

    def __init__(self, root: int | None) -> None:
        self.root = root
        self.seconds: float | None = None
        self.root_seconds: float | None = None

    def __enter__(self) -> CpuMeter:
        if self.root:
            self._before, self._root_before = cpu_ticks(self.root), own_ticks(self.root)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.root:
            self.seconds = (cpu_ticks(self.root) - self._before) / CLK_TCK
            self.root_seconds = (own_ticks(self.root) - self._root_before) / CLK_TCK


def memory(root: int) -> dict[str, float]:
    """Pss and Rss (MB) of ``root``'s tree, from smaps_rollup; processes counted."""
    pss = rss = 0
    n = 0
    for pid in tree(root):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        n += 1
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "Pss":
                pss += int(value.split()[0])
            elif key == "Rss":
                rss += int(value.split()[0])
    return {"pss_mb": round(pss / 1024, 1), "rss_mb": round(rss / 1024, 1), "processes": n}


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def per_thousand(cpu_seconds: float | None, inputs: float) -> float | None:
    return round(1000 * cpu_seconds / inputs, 3) if cpu_seconds is not None and inputs else None


# -- pinning ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pinning:
    """Which CPUs the server (and in-process runs) and the load generator get; ``None`` when not pinned."""

    server: tuple[int, ...] | None
    load_generator: tuple[int, ...] | None
    note: str

    def prefix(self, cpus: tuple[int, ...] | None) -> list[str]:
        if cpus is None or not shutil.which("taskset"):
            return []
        return ["taskset", "-c", ",".join(str(c) for c in cpus)]

    def describe(self) -> dict[str, Any]:
        return {"server_cpus": list(self.server) if self.server else None,
                "load_generator_cpus": list(self.load_generator) if self.load_generator else None,
                "note": self.note}


def plan_pinning(cpus: list[int], has_taskset: bool) -> Pinning:
    """The load generator on its own core (the last) and everything else on the rest, where there are at least
    3 cores; on fewer the server would be left one core, so nothing is pinned."""
    if not has_taskset:
        return Pinning(None, None, "not pinned: no taskset")
    if len(cpus) < 3:
        return Pinning(None, None, f"not pinned: {len(cpus)} cores")
    return Pinning(tuple(cpus[:-1]), (cpus[-1],),
                   f"load generator on CPU {cpus[-1]}, server and in-process runs on CPUs {cpus[0]}-{cpus[-2]}")


def machine_pinning() -> Pinning:
    return plan_pinning(sorted(os.sched_getaffinity(0)), shutil.which("taskset") is not None)


# -- FLOPs ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shapes:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    head: str  # "none" (pooled embeddings), "mlm" (SPLADE: a vocabulary-wide logit per token), "classifier"

    @classmethod
    def of(cls, model_dir: Path, task: str) -> Shapes:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        head = {"sparse_embedding": "mlm", "rerank": "classifier"}.get(task, "none")
        return cls(config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"],
                   config["num_attention_heads"], config.get("vocab_size", 0), head)


def flops(shapes: Shapes, tokens: int) -> dict[str, int]:
    """FLOPs of one input of ``tokens`` tokens (2 per multiply-add), by kind:

    - ``projections``: Q, K, V and the attention output (4 x hidden^2 per token), the feed-forward in
    - ``ffn_out``: the feed-forward output projection (intermediate -> hidden; ``models optimize --quantize int8``
      keeps it in fp32)
    - ``attention``: Q.K^T and scores.V (2 x tokens^2 x hidden per layer, times 2 per multiply-add)
    - ``head``: SPLADE's MLM transform and vocabulary projection per token; a cross-encoder's pooler and classifier
    """
    t, h, i = tokens, shapes.hidden, shapes.intermediate
    projections = shapes.layers * 2 * t * (4 * h * h + h * i)
    ffn_out = shapes.layers * 2 * t * i * h
    attention = shapes.layers * 2 * 2 * t * t * h
    if shapes.head == "mlm":
        head = 2 * t * (h * h + h * shapes.vocab)
    elif shapes.head == "classifier":
        head = 2 * (h * h + h)
    else:
        head = 0
    return {"projections": projections, "ffn_out": ffn_out, "attention": attention, "head": head,
            "total": projections + ffn_out + attention + head}


def flops_per_input(shapes: Shapes, token_counts: list[int]) -> dict[str, float]:
    """Mean FLOPs per input over measured token counts (attention grows with the square of each input's own)."""
    parts = [flops(shapes, t) for t in token_counts]
    return {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}


def utilisation(inputs_per_s: float, per_input: dict[str, float], peak_fp32: float,
                peak_int8: float | None = None) -> dict[str, float]:
    """Model FLOP utilisation: achieved FLOPs over the GEMM peak. With an int8 peak (an int8-quantized model),
    the limit is a mix: the quantized products at the int8 peak, the rest (the feed-forward output and the
    attention products, which stay fp32) at the fp32 peak; the utilisation is then the achieved rate over that
    mixed limit, i.e. the share of the time the limit would take."""
    achieved = inputs_per_s * per_input["total"]
    if peak_int8:
        int8 = per_input["projections"]
        seconds_at_peak = int8 / peak_int8 + (per_input["total"] - int8) / peak_fp32
        limit = per_input["total"] / seconds_at_peak
    else:
        limit = peak_fp32
    return {"achieved_gflops": round(achieved / 1e9, 2), "peak_gflops": round(limit / 1e9, 2),
            "utilisation": round(achieved / limit, 3)}


# -- the GEMM peak (a subprocess at the benchmark's threads and pinning) ------------------------------------

PEAK = r"""
import json, os, sys, time
threads, n, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
os.environ["OMP_NUM_THREADS"] = str(threads)
import numpy as np, torch
torch.set_num_threads(threads)

def best(name, fn, flop):
    # By the wall clock, and by CPU time: the rate while the product runs, which other processes sharing the
    # cores do not lower (CPU seconds / threads = the seconds each of the threads ran).
    fn()
    walls, cpus = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    out[name] = flop / min(walls)
    out[name + "_running"] = flop / (min(cpus) / threads)

out = {"n": n, "threads": threads}
a, b = torch.randn(n, n), torch.randn(n, n)
best("fp32_torch", lambda: torch.mm(a, b), 2 * n ** 3)
qa, qb = torch.randint(-128, 127, (n, n), dtype=torch.int8), torch.randint(-128, 127, (n, n), dtype=torch.int8)
try:
    best("int8_torch_int_mm", lambda: torch._int_mm(qa, qb), 2 * n ** 3)
except Exception as exc:
    out["int8_torch_int_mm_error"] = repr(exc)[:200]
try:
    import onnx, onnxruntime as ort
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "peak",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions(); opts.intra_op_num_threads = threads; opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"a": np.random.randint(0, 255, (n, n), dtype=np.uint8), "b": np.random.randint(-128, 127, (n, n), dtype=np.int8)}
    best("int8_onnxruntime_matmulinteger", lambda: sess.run(None, feed), 2 * n ** 3)
except Exception as exc:
    out["int8_onnxruntime_error"] = repr(exc)[:200]
print(json.dumps(out))
"""


def gemm_peak(threads: int, prefix: list[str], n: int = 2048, reps: int = 5) -> dict[str, Any]:
    """FLOP/s of an n x n matmul (best of ``reps``) in fp32 and int8, in a fresh process at ``threads`` threads:
    by the wall clock (``fp32_torch``) and while running (``fp32_torch_running``, by CPU time); ``int8_best`` and
    ``int8_best_running``: the better of the int8 kernels."""
    out = subprocess.run([*prefix, sys.executable, "-P", "-c", PEAK, str(threads), str(n), str(reps)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for suffix in ("", "_running"):
        int8 = [result[k] for k in ("int8_torch_int_mm" + suffix, "int8_onnxruntime_matmulinteger" + suffix)
                if isinstance(result.get(k), float)]
        result["int8_best" + suffix] = max(int8) if int8 else None
    return result


# -- where the time goes (a short profile of in-process encode) ----------------------------------------------

PROFILE = r"""
import json, os, sys, time
threads, path, n, bs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.environ["OMP_NUM_THREADS"] = str(threads)
import torch
torch.set_num_threads(threads)
sys.path.insert(0, sys.argv[5])
from common import passages
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(path, device="cpu")
items = passages(n)
# encode's own order: longest first, so that a batch's inputs have similar lengths
order = sorted(items, key=lambda s: -len(s))
batches = [order[i:i + bs] for i in range(0, len(order), bs)]
model.encode(items[:bs], batch_size=bs)
# CPU time, not wall time: on a shared machine the wall clock also counts other processes' turns
t = time.process_time(); model.encode(items, batch_size=bs); encode_s = time.process_time() - t
t = time.process_time(); features = [model.tokenize(b) for b in batches]; tokenize_s = time.process_time() - t
real = sum(int(f["attention_mask"].sum()) for f in features)
padded = sum(f["attention_mask"].numel() for f in features)
from torch.profiler import ProfilerActivity, profile
with torch.inference_mode():
    t = time.process_time()
    for f in features:
        model.forward(dict(f))
    forward_s = time.process_time() - t
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for f in features:
            model.forward(dict(f))
        profiled_wall_s = time.perf_counter() - t
LINEAR = {"aten::addmm", "aten::mm", "aten::matmul", "aten::linear"}
ATTENTION = {"aten::bmm", "aten::_softmax", "aten::softmax", "aten::baddbmm",
             "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention",
             "aten::_scaled_dot_product_attention_math"}
groups = {"linear": 0.0, "attention": 0.0, "other_ops": 0.0}
for e in prof.key_averages():
    us = e.self_cpu_time_total
    groups["linear" if e.key in LINEAR else "attention" if e.key in ATTENTION else "other_ops"] += us / 1e6
print(json.dumps({"inputs": n, "batch_size": bs, "encode_s": encode_s, "tokenize_s": tokenize_s,
                  "forward_s": forward_s, "real_tokens": real, "padded_tokens": padded,
                  "op_seconds": groups, "profiled_wall_s": profiled_wall_s,
                  "token_counts": [int(f["attention_mask"][j].sum()) for f in features for j in range(len(f["attention_mask"]))]}))
"""


def profile_encode(model_dir: Path, threads: int, batch_size: int, n: int, prefix: list[str],
                   shapes: Shapes) -> dict[str, Any]:
    """Where in-process ``encode`` of passages spends its time, as shares of its CPU time: tokenisation, the
    linear layers (with their achieved FLOP rate at these shapes), attention, the other
    operators (layer norms, GELU, adds), what the profiler does not see (Python, framework), and the share
    of computed tokens that are padding."""
    out = subprocess.run([*prefix, sys.executable, "-P", "-c", PROFILE, str(threads), str(model_dir), str(n),
                          str(batch_size), str(Path(__file__).resolve().parent)],
                         capture_output=True, text=True, check=True)
    p = json.loads(out.stdout.strip().splitlines()[-1])
    counts = p.pop("token_counts")
    total = p["tokenize_s"] + p["forward_s"]
    ops = p["op_seconds"]
    # The operators' shares of the profiled forward, applied to the forward's CPU time without the profiler;
    # what the profiler sees in no operator is Python and framework time (its own overhead included).
    wall = max(p["profiled_wall_s"], sum(ops.values()))
    scale = p["forward_s"] / wall
    useful = flops_per_input(shapes, counts)
    linear_flops = (useful["projections"] + useful["ffn_out"] + useful["head"]) * len(counts) * (
        p["padded_tokens"] / p["real_tokens"])
    shares = {"tokenisation": p["tokenize_s"] / total,
              "linear_layers": scale * ops["linear"] / total,
              "attention": scale * ops["attention"] / total,
              "other_operators": scale * ops["other_ops"] / total}
    shares["python_and_framework"] = max(0.0, 1 - sum(shares.values()))  # profiler overhead included
    return {"inputs": n, "batch_size": batch_size, "encode_s": round(p["encode_s"], 3), "hidden": shapes.hidden,
            "head_width": shapes.hidden // shapes.heads,
            "time_shares": {k: round(v, 3) for k, v in shares.items()},
            "padding_share_of_tokens": round(1 - p["real_tokens"] / p["padded_tokens"], 3),
            "attention_share_of_flops": round(useful["attention"] / useful["total"], 3),
            "linear_layers_gflops": round(linear_flops / (scale * ops["linear"]) / 1e9, 2) if ops["linear"] else None}
