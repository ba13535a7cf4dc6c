"""Start the cluster box by hand (`make cluster`): prints the kubeconfig to use with kubectl and
serves until interrupted. Run as a script, never with `python -m` from the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder is sys.path[0]; the package is imported from tests/ instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

from clusterbox import ClusterBox  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clusterbox", description="A Kubernetes API server for trying Infernetes without a cluster.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--kubeconfig", type=Path, default=None, help="where to write the kubeconfig (default: a new temporary folder)")
    parser.add_argument("--no-kubelet", action="store_true", help="schedule pods but run none (no kubelet)")
    parser.add_argument("--node-cpu", default="4", help="the node's allocatable CPUs (default 4)")
    parser.add_argument("--node-memory", default="16Gi", help="the node's allocatable memory (default 16Gi)")
    args = parser.parse_args(argv)
    box = ClusterBox(port=args.port, kubelet=not args.no_kubelet, node_cpu=args.node_cpu, node_memory=args.node_memory).start()
    path = args.kubeconfig or Path(tempfile.mkdtemp(prefix="clusterbox-")) / "kubeconfig"
    box.write_kubeconfig(path)
    print(f"cluster box serving on {box.url}", flush=True)
    print(f"kubeconfig: {path}", flush=True)
    print(f"  export KUBECONFIG={path}", flush=True)
    print("  kubectl apply -f crds/ && kubectl apply -f examples/endpoints/03-e5.yaml && kubectl get inferenceendpoints", flush=True)
    running = "no kubelet: no pod process runs" if args.no_kubelet else "pods run as processes of this checkout's .venv"
    print(f"(Deployments, ReplicaSets, scheduling and EndpointSlices are controlled; {running}; Ctrl-C stops)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        box.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
