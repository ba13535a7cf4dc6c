"""Where a short request's server CPU goes: the worker's own batch figures beside the benchmark's load.

    .venv/bin/python bench/batch_breakdown.py                 # MiniLM, short queries, concurrency 1, 16, 64
    .venv/bin/python bench/batch_breakdown.py --passes-off    # the same with every batch run as one pass

For each concurrency it drives one endpoint (1 allocation x 1 thread) as ``make bench`` does (wrk, or aiohttp
where wrk is missing) and reads the worker's own ``/metrics`` before and after: forward passes, inputs and
padded tokens per pass, model time per pass and the model thread's CPU per input beside the server's (every
process of ``infernetes serve``) and the gateway's. What is left over is the worker outside the model (the
hop, parsing, tokenising, answering). It also runs the same model in-process at the same batch sizes, so
the model's share can be compared with ``encode`` at the batch size the server actually reached.

Results: bench/results/batch_breakdown.json (README, Benchmarks, quotes it).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402
from common import RESULTS, Serve, dump, machine  # noqa: E402

HISTOGRAMS = ("batch_size", "batch_tokens", "inference_seconds")
COUNTERS = ("inference_cpu_seconds_total",)


def worker_figures(url: str) -> dict[str, float]:
    """Sum and count of the worker's pass histograms (one allocation: one series each)."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        m = re.match(r"infernetes_(\w+?)_(sum|count)\{[^}]*\} (\S+)$", line)
        if m and m.group(1) in HISTOGRAMS:
            out[f"{m.group(1)}_{m.group(2)}"] = float(m.group(3))
        m = re.match(r"infernetes_(\w+)\{[^}]*\} (\S+)$", line)
        if m and m.group(1) in COUNTERS:
            out[m.group(1)] = float(m.group(2))
    return out


def worker_url(serve_pid: int) -> str:
    procs = psutil.Process(serve_pid).children(recursive=True)
    worker = next(p for p in procs if "--deployment-id" in " ".join(p.cmdline()))
    port = next(c.laddr.port for c in worker.net_connections("tcp") if c.status == psutil.CONN_LISTEN)
    return f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--passes-off", action="store_true",
                    help="run every batch as one pass (INFERNETES_WORKER_FORWARD_OVERHEAD_TOKENS huge)")
    ap.add_argument("--out", type=Path, default=RESULTS / "batch_breakdown.json")
    args = ap.parse_args()
    if args.passes_off:  # read by the forked workers (settings the runtime does not pass)
        os.environ["INFERNETES_WORKER_FORWARD_OVERHEAD_TOKENS"] = str(10**9)
    report: dict[str, Any] = {"machine": machine(), "load_generator": bench.load_generator(),
                              "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                              "passes_off": args.passes_off, "levels": []}
    with Serve() as serve:
        models = bench.prepare_models(serve, ["text_embedding"], None)
        serve.put("text_embedding", "ep", {"num_allocations": 1, "num_threads": 1, "model_id": "minilm"})
        path = "/_inference/text_embedding/ep"
        payloads = bench.bodies("text_embedding", "short")
        bench.closed_loop(serve.url, path, payloads, 4, 3, [])  # warm-up
        url = worker_url(serve.proc.pid)
        sizes = set()
        for c in (int(x) for x in args.concurrency.split(",")):
            bench.settle(serve.url, "ep")
            before = worker_figures(url)
            r = bench.closed_loop(serve.url, path, payloads, c, args.duration, bench._tree(serve.proc.pid))
            after = worker_figures(url)
            d = {k: after[k] - before.get(k, 0.0) for k in after}
            passes, inputs = d["batch_size_count"], d["batch_size_sum"]
            level = {
                "concurrency": c,
                "requests_per_s": round(r["requests_per_s"], 1),
                "server_cpu_ms_per_request": round(1000 * r["server_cpu_s"] / r["requests"], 2),
                "gateway_cpu_ms_per_request": round(1000 * r["gateway_cpu_s"] / r["requests"], 2),
                "passes_per_s": round(passes / args.duration, 1),
                "inputs_per_pass": round(inputs / passes, 1),
                "padded_tokens_per_input": round(d["batch_tokens_sum"] / inputs, 1),
                "model_ms_per_pass": round(1000 * d["inference_seconds_sum"] / passes, 2),
                # CPU time of the model thread, not the wall clock: a thread that waits for a core (another
                # process, or the hypervisor taking the vCPU) does not count as the model's cost.
                "model_cpu_ms_per_input": round(1000 * d["inference_cpu_seconds_total"] / inputs, 2),
            }
            level["worker_outside_model_ms_per_request"] = round(level["server_cpu_ms_per_request"]
                                                                 - level["gateway_cpu_ms_per_request"]
                                                                 - level["model_cpu_ms_per_input"], 2)
            report["levels"].append(level)
            sizes.add(max(1, round(level["inputs_per_pass"])))
            print(level, flush=True)
        base = bench.in_process("encode", models["minilm"], 1, "short", False, sorted(sizes | {32}))
        report["in_process_cpu_ms_per_input_by_batch_size"] = base["cpu_s_per_1000_by_batch_size"]
        counts = bench.token_counts(models["minilm"], "text_embedding", "short")
        report["tokens_per_input"] = round(statistics.mean(counts), 1)
    dump(args.out, report)
    print(report["in_process_cpu_ms_per_input_by_batch_size"])


if __name__ == "__main__":
    main()
