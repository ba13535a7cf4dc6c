"""Cluster-mode overhead, measured on the cluster box: inference through the gateway against straight to the worker.

    .venv/bin/python bench/cluster_overhead.py                  # writes bench/results/cluster_overhead.json
    .venv/bin/python bench/cluster_overhead.py --duration 4 --rounds 1 --out /tmp/c.json

It starts a box with its controllers and its kubelet (tests/clusterbox: every pod a real process of this project's
venv on its own loopback address), installs the chart with kubectl as a user does (operator, two gateway pods, the
NetworkPolicies, the API keys and the worker credential, all as by default), seeds MiniLM (all-MiniLM-L6-v2 from
its PyPI package, as the `.multilingual-e5-small` stand-in) through the chart's ``modelCache.seedDir``, and creates
one ``text_embedding`` endpoint of 1 allocation × 1 thread. Then, with bench/run.py's load generator (wrk, else
aiohttp) at one concurrency, short single-input requests go

- **through the gateway**: ``POST /_inference/text_embedding/{id}`` with the chart's API key, to a gateway pod's
  address found through the gateway Service's EndpointSlices (what kube-proxy picks for a connection; the box has
  no Service network, and a proxy in this process would cost CPU that a cluster's kernel does not);
- **straight to the worker pod**: ``POST /infer`` on its inference port with the worker credential, the very
  request the gateway forwards.

The two sides alternate over several rounds (shared cores drift: alternation spreads the drift over both), and each
window charges the CPU-seconds (utime + stime from /proc, whole process trees: the kubelet reports each container's
pid) of the gateway pods and of the worker pod to the requests answered. The target: gateway throughput ≥ 0.9 ×
direct. The box, its pods and every process started here are stopped when the run ends, also on failure.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # the box and its fixtures (as pytest's pythonpath)
import cost  # noqa: E402
import run  # noqa: E402  (its load generator)
from common import RESULTS, die_with_parent, dump, machine, texts  # noqa: E402

TARGET = 0.9  # gateway throughput ÷ direct (issue 16 item 5)
ENDPOINT = "bench-minilm"
MODEL_ID = ".multilingual-e5-small"  # seeded with MiniLM, as the e2e tests do
COMPONENT = "app.kubernetes.io/component"


# -- the summary (pure) -----------------------------------------------------------------------------------

def summarise(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's windows pooled: requests/s over all of them (total requests ÷ total seconds), the median of the
    windows' p50 and p99, and CPU-seconds per 1,000 requests of each process group (``cpu_s``: name -> seconds)."""
    requests = sum(w["requests"] for w in windows)
    seconds = sum(w["seconds"] for w in windows)
    groups = sorted({g for w in windows for g in w["cpu_s"]})
    cpu = {g: sum(w["cpu_s"].get(g, 0.0) for w in windows) for g in groups}
    return {
        "windows": len(windows),
        "requests": requests,
        "errors": sum(w["errors"] for w in windows),
        "seconds": round(seconds, 2),
        "requests_per_s": round(requests / seconds, 1) if seconds else None,
        "p50_ms": round(statistics.median(w["p50_ms"] for w in windows), 2),
        "p99_ms": round(statistics.median(w["p99_ms"] for w in windows), 2),
        "cpu_s_per_1000_requests": {g: cost.per_thousand(cpu[g], requests) for g in groups},
    }


def compare(gateway: list[dict[str, Any]], direct: list[dict[str, Any]], target: float = TARGET) -> dict[str, Any]:
    """Both sides summarised, the pooled throughput ratio gateway ÷ direct against the target, and the ratio of
    each round's pair of windows (their spread shows how much the shared machine moved between windows)."""
    g, d = summarise(gateway), summarise(direct)
    ratio = round(g["requests_per_s"] / d["requests_per_s"], 3) if g["requests_per_s"] and d["requests_per_s"] else None
    per_round = [round((a["requests"] / a["seconds"]) / (b["requests"] / b["seconds"]), 3)
                 for a, b in zip(gateway, direct) if a["seconds"] and b["seconds"] and b["requests"]]
    return {"gateway": g, "direct": d, "ratio_gateway_to_direct": ratio, "ratio_per_round": per_round,
            "cost_ratio_direct_to_gateway": cost_ratio(g, d),
            "target": {"op": ">=", "limit": target, "met": None if ratio is None else ratio >= target}}


def cost_ratio(gateway: dict[str, Any], direct: dict[str, Any]) -> float | None:
    """The server CPU of a request straight to the worker ÷ that of one through the gateway (gateway pods + worker):
    the throughput ratio to expect where the cores, not the worker's model thread, are the limit. Unlike the
    throughput ratio, it does not move with what else shares the machine."""
    g, d = gateway["cpu_s_per_1000_requests"], direct["cpu_s_per_1000_requests"]
    if g.get("worker") is None or d.get("worker") is None:
        return None
    through = g["worker"] + (g.get("gateway") or 0.0)
    return round(d["worker"] / through, 3) if through else None


# -- the box ----------------------------------------------------------------------------------------------

def seed_dir() -> Path:
    """A data directory holding MiniLM as the E5 stand-in, for the chart's ``modelCache.seedDir``: the e2e tests'
    one (in the user's cache, outside /tmp, which pods mount as their own emptyDir), imported once."""
    from infernetes.operator.demo import DEMO_MODELS
    from infernetes.worker.modelstore import ModelStore

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infernetes" / "e2e-seed"
    root.mkdir(parents=True, exist_ok=True)
    store = ModelStore(root / "models")
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run (or the e2e tests) importing at the same time
        if store.get(MODEL_ID) is None:
            find, task, package, overrides = DEMO_MODELS[MODEL_ID]
            folder = find()
            if folder is None:
                raise SystemExit(f"the demo model package for {MODEL_ID} is missing: pip install {package}")
            store.import_folder(folder, MODEL_ID, task_type=task, overrides=overrides)
    return root


def _secret(api: Any, namespace: str, name: str, key: str) -> str:
    r = api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
    r.raise_for_status()
    return base64.b64decode(r.json()["data"][key]).decode()


def _pods(api: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
    items = api.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector}).json()["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in (p.get("status") or {}).get("conditions") or ())]


def pod_pids(pod: dict[str, Any]) -> list[int]:
    """The main process of each running container of a pod: the box's kubelet reports ``box://<pid>``."""
    out = []
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        cid = cs.get("containerID") or ""
        if "running" in (cs.get("state") or {}) and cid.startswith("box://") and cid[6:].isdigit():
            out.append(int(cid[6:]))
    return out


def http_port(pod: dict[str, Any]) -> int:
    for c in pod["spec"]["containers"]:
        for p in c.get("ports") or ():
            if p.get("name") == "http":
                return int(p["containerPort"])
    raise RuntimeError(f"pod {pod['metadata']['name']} has no port named http")


@contextmanager
def cluster(workdir: Path, gateway_replicas: int | None) -> Iterator[dict[str, Any]]:
    """The chart installed on a fresh box with one endpoint Ready; yields the two sides to measure and the pids
    to charge. The box (and with it every pod's processes) is stopped when the block ends, also on failure."""
    from clusterbox.fixtures import installed

    values: dict[str, Any] = {"modelCache": {"seedDir": str(seed_dir())}}
    if gateway_replicas is not None:
        values["gateway"] = {"replicas": gateway_replicas}
    with installed(workdir, values=values, node_cpu="8", timeout=600) as inst:
        doc = {"apiVersion": "infernetes.dev/v1alpha1", "kind": "InferenceEndpoint", "metadata": {"name": ENDPOINT},
               "spec": {"task_type": "text_embedding", "service": "elasticsearch",
                        "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": MODEL_ID}}}
        inst.kubectl("apply", "-f", "-", input=json.dumps(doc))
        r = inst.kubectl("wait", "--for=condition=Ready", f"ie/{ENDPOINT}", "--timeout=600s", timeout=630, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"the endpoint did not turn Ready: {r.stderr}\n{inst.diagnose()}")
        with inst.client() as api:
            ns = inst.namespace
            api_key = _secret(api, ns, f"{inst.release}-api-keys", "encoded")
            credential = _secret(api, ns, f"{inst.release}-worker-credential", "token")
            gateways = _pods(api, ns, f"{COMPONENT}=gateway")
            workers = _pods(api, ns, f"infernetes.dev/deployment={ENDPOINT}")
        if len(workers) != 1 or not gateways:
            raise RuntimeError(f"expected 1 worker pod and gateway pods, found {len(workers)} and {len(gateways)}")
        worker = workers[0]
        ip, port = inst.service_address(inst.release, "http")
        yield {
            "sides": {
                "gateway": {"url": f"http://{ip}:{port}", "path": f"/_inference/text_embedding/{ENDPOINT}",
                            "headers": {"Authorization": f"ApiKey {api_key}"}},
                "direct": {"url": f"http://{worker['status']['podIP']}:{http_port(worker)}", "path": "/infer",
                           "headers": {"Authorization": f"Bearer {credential}"}},
            },
            "pids": {"gateway": [pid for p in gateways for pid in pod_pids(p)], "worker": pod_pids(worker)},
            "gateway_pods": len(gateways),
            "gateway_target": f"{ip}:{port}",
            "target_pids": next((pod_pids(p) for p in gateways if p["status"].get("podIP") == ip), []),
        }


def _frame(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: one name per function, whatever the line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rsplit(':', 1)[0]).name})" if where else name


def summarise_stacks(raw: str, top: int = 15) -> dict[str, Any]:
    """py-spy's raw output (``frame;frame;... count`` per line, the root first) as the shares of the samples: by
    the function running (self) and by each function on the stack (inclusive, counted once per stack)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n

    def shares(counts: dict[str, int]) -> list[list[Any]]:
        return [[f, round(c / total, 3)] for f, c in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:top]]

    return {"samples": total, "self": shares(own) if total else [], "inclusive": shares(inclusive) if total else []}


def python_pid(root: int) -> int:
    """The deepest Python process of a container's tree (its main process may be a wrapper: unshare, a shell)."""
    pids = [p for p in cost.tree(root) if "python" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode()]
    return pids[-1] if pids else root


def profile_gateway(side: dict[str, Any], payloads: list[dict[str, Any]], concurrency: int, seconds: float,
                    root: int, out: Path) -> dict[str, Any]:
    """py-spy (non-blocking, so the gateway is not paused) on the gateway pod's process during one more window of
    the gateway route; the raw stacks are written to ``out``."""
    pyspy = Path(sys.executable).with_name("py-spy")
    pid = python_pid(root)
    proc = subprocess.Popen([str(pyspy), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                             "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    try:
        result = run.closed_loop(side["url"], side["path"], payloads, concurrency, seconds, [], headers=side["headers"])
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not out.exists():
        return {"error": err.decode(errors="replace")[-500:]}
    return {"pid": pid, "seconds": seconds, "requests_per_s": round(result["requests_per_s"], 1),
            **summarise_stacks(out.read_text())}


def _ticks(roots: list[int]) -> int:
    return sum(cost.cpu_ticks(pid) for pid in roots)


def window(side: dict[str, Any], payloads: list[dict[str, Any]], concurrency: int, seconds: float,
           pids: dict[str, list[int]]) -> dict[str, Any]:
    """One closed-loop window of bench/run.py's load generator, with each process group's CPU over it."""
    before = {g: _ticks(roots) for g, roots in pids.items()}
    t0 = time.monotonic()
    result = run.closed_loop(side["url"], side["path"], payloads, concurrency, seconds, [], headers=side["headers"])
    elapsed = time.monotonic() - t0
    cpu = {g: round((_ticks(roots) - before[g]) / cost.CLK_TCK, 3) for g, roots in pids.items()}
    # wrk measures its own duration; the aiohttp loop returns requests/s over its own window
    measured = result["requests"] / result["requests_per_s"] if result["requests_per_s"] else elapsed
    return {"requests": result["requests"], "errors": result["errors"], "seconds": round(measured, 3),
            "requests_per_s": round(result["requests_per_s"], 1), "p50_ms": round(result["p50_ms"], 2),
            "p99_ms": round(result["p99_ms"], 2), "cpu_s": cpu, "wall_s": round(elapsed, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=4, help="windows per side, alternating gateway and direct")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight, the same on both sides")
    parser.add_argument("--gateway-replicas", type=int, help="the chart's gateway.replicas (default: the chart's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cluster_overhead.json")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="then profile the gateway pod with py-spy for one more window of this length (raw "
                             "stacks next to --out, a summary in the JSON)")
    args = parser.parse_args()
    run.PIN = pin = cost.machine_pinning()
    if pin.load_generator:
        os.sched_setaffinity(0, pin.load_generator)
    payloads = [{"input": [t]} for t in texts(256)]
    report: dict[str, Any] = {
        "benchmark": "cluster-mode overhead on the cluster box", "machine": machine(),
        "load_generator": run.load_generator(), "pinning": pin.describe(), "arguments": " ".join(sys.argv[1:]),
        "concurrency": args.concurrency, "duration_s": args.duration, "rounds": args.rounds,
        "endpoint": {"task_type": "text_embedding", "model_id": MODEL_ID, "num_allocations": 1, "num_threads": 1,
                     "model": f"all-MiniLM-L6-v2, seeded as the `{MODEL_ID}` stand-in"},
        "inputs": "short single-input requests (~11 tokens)", "loadavg_start": cost.loadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory(prefix="cluster-overhead-") as tmp, cluster(Path(tmp), args.gateway_replicas) as c:
        sides, pids = c["sides"], c["pids"]
        report["gateway_pods"] = c["gateway_pods"]
        report["routes"] = {
            "gateway": f"POST {sides['gateway']['path']} with the chart's API key, straight to one gateway pod's "
                       f"address ({c['gateway_target']}) resolved through the gateway Service's EndpointSlices",
            "direct": f"POST /infer on the worker pod's inference port with the worker credential (Bearer), the "
                      "request the gateway forwards"}
        print(f"installed: gateway {c['gateway_target']} ({c['gateway_pods']} pods), worker {sides['direct']['url']}; "
              f"pids {pids}", flush=True)
        for name in ("gateway", "direct"):  # warm-up: connections, the tracing of the first batches
            side = sides[name]
            run.closed_loop(side["url"], side["path"], payloads, 4, 2.0, [], headers=side["headers"])
        windows: dict[str, list[dict[str, Any]]] = {"gateway": [], "direct": []}
        for k in range(args.rounds):
            for name in (("gateway", "direct") if k % 2 == 0 else ("direct", "gateway")):
                w = window(sides[name], payloads, args.concurrency, args.duration, pids)
                windows[name].append(w)
                print(f"round {k + 1} {name}: {w['requests_per_s']}/s p50 {w['p50_ms']} ms p99 {w['p99_ms']} ms "
                      f"errors {w['errors']} cpu {w['cpu_s']}", flush=True)
        if args.profile > 0 and c["target_pids"] and Path(sys.executable).with_name("py-spy").exists():
            stacks = args.out.with_name(args.out.stem + ".gateway-stacks.txt")
            report["gateway_profile"] = profile_gateway(sides["gateway"], payloads, args.concurrency, args.profile,
                                                        c["target_pids"][0], stacks)
            print(f"gateway profile: {json.dumps(report['gateway_profile'])[:2000]}", flush=True)
    report["windows"] = windows
    report.update(compare(windows["gateway"], windows["direct"]))
    report["loadavg_end"] = cost.loadavg()
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dump(args.out, report)
    t = report["target"]
    print(f"gateway {report['gateway']['requests_per_s']}/s, direct {report['direct']['requests_per_s']}/s: "
          f"ratio {report['ratio_gateway_to_direct']} (target >= {t['limit']}: "
          f"{'met' if t['met'] else 'MISSED'}); per round {report['ratio_per_round']}; wrote {args.out}")


if __name__ == "__main__":
    main()
