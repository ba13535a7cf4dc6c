"""API server load of the operator at 1, 10 and 50 endpoints, measured on the cluster box.

The box records every API request (verb, resource, user); only the operator's own (the chart's
ServiceAccount) are counted. Each size gets a fresh box with the chart's RBAC and the operator with
the chart's default intervals (status resync and autoscaler every 5 s); the endpoints are adaptive
(min 1, max 2), so the autoscaler's per-endpoint reads are in the figures. Recorded per size:
calls to bring the endpoints up (create to status written), and calls per minute in the steady state
after (a `window` of seconds scaled to a minute); watches are long-lived requests and count once.

    .venv/bin/python bench/api_load.py                   # writes bench/results/api_load.json
    .venv/bin/python bench/api_load.py --sizes 1 5 --window 10 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OPERATOR_USER = "system:serviceaccount:infernetes-system:infernetes"


def _tests_on_path() -> None:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)  # the box and the fixtures' helpers (as pytest's pythonpath)


def measure(size: int, window_s: float | None = None, rounds: int | None = None,
            settings: dict[str, Any] | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Operator API calls for `size` adaptive endpoints: to come up, then in the steady state, either over
    `window_s` seconds or over `rounds` more reconciles of every endpoint (the count the tests compare)."""
    _tests_on_path()
    import helm_python
    import yaml
    from clusterbox import ClusterBox
    from clusterbox.fixtures import create_crds

    from cluster.conftest import CHART, IE, NS, RBAC_KINDS, RELEASE_NS, RunningOperator, endpoint, eventually
    from cluster.conftest import install, operator_settings

    chart = helm_python.Chart.load(CHART)
    rendered = chart.render({"watchNamespaces": [NS]}, name="infernetes", namespace=RELEASE_NS, is_install=True)
    rbac = [d for name, text in rendered.items() if not name.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d and d["kind"] in RBAC_KINDS]
    box = ClusterBox(bookmark_interval=5.0, controllers=False).start()
    op = None
    try:
        with box.client() as api:
            create_crds(api)
            for ns in (NS, RELEASE_NS):
                assert api.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
            install(api, rbac)
            start = len(box.requests())
            op = RunningOperator(box, operator_settings(**(settings or {}))).start()
            names = [f"e{i}" for i in range(size)]
            for name in names:
                assert api.post(IE, json=endpoint(name, adaptive=(1, 2))).status_code == 201

            def up() -> bool:
                items = api.get(IE).json()["items"]
                return len(items) == size and all((i.get("status") or {}).get("conditions") for i in items)
            eventually(up, timeout=timeout, what=f"{size} endpoints with a status")
            eventually(lambda: all(op.reconciled(n) for n in names), timeout=timeout, what="reconciles")
            ready = len(box.requests())
            began = time.monotonic()
            if rounds is not None:
                marks = {n: op.reconciles.get(n, 0) for n in names}
                eventually(lambda: all(op.reconciled(n, marks[n] + rounds) for n in names), timeout=timeout,
                           what=f"{rounds} more reconciles of each endpoint")
            else:
                time.sleep(window_s or 30.0)  # a bench: the steady state over wall time
            elapsed = time.monotonic() - began
            calls = box.requests()
        mine = [(verb, res) for verb, res, user in calls[start:] if user == OPERATOR_USER]
        startup = [(verb, res) for verb, res, user in calls[start:ready] if user == OPERATOR_USER]
        steady = [(verb, res) for verb, res, user in calls[ready:] if user == OPERATOR_USER]
        return {
            "endpoints": size,
            "startup_calls": len(startup),
            "steady_calls": len(steady),
            "steady_seconds": round(elapsed, 2),
            "steady_calls_per_minute": round(60 * len(steady) / elapsed, 1) if elapsed else None,
            "by_verb_and_resource": dict(Counter(f"{v} {r}" for v, r in steady).most_common()),
            "total_calls": len(mine),
        }
    finally:
        if op is not None:
            op.stop()
        box.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--window", type=float, default=30.0, help="steady-state seconds measured per size")
    parser.add_argument("--out", type=Path, default=RESULTS / "api_load.json")
    args = parser.parse_args()
    # The chart's defaults: status resync and autoscaler every 5 s.
    settings = {"status_interval_s": 5.0, "autoscale_interval_s": 5.0, "retry_delay_s": 15.0}
    rows = []
    for size in args.sizes:
        row = measure(size, window_s=args.window, settings=settings, timeout=300)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "by_verb_and_resource"}), flush=True)
    per_endpoint = [round(r["steady_calls_per_minute"] / r["endpoints"], 1) for r in rows]
    out = {"benchmark": "operator API calls on the cluster box", "settings": settings, "window_s": args.window,
           "rows": rows, "steady_calls_per_minute_per_endpoint": per_endpoint,
           "command": "bench/api_load.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
