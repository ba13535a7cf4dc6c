"""Infernetes installed on the cluster box as a user installs it, for the e2e tests (issue 11 item 4).

A box with its controllers and its kubelet (so the operator and the gateway run as pods of the
box, as processes of this project's venv); the project's CRDs applied with the real kubectl, then
the Helm chart rendered by helm-python-sdk (a real Helm) and applied with kubectl, into its own
namespace. What e2e tests get is an `Installation`: kubectl bound to the box, an API client, the
rendered documents, and `service_address`, which resolves a Service to a ready pod's address
through its EndpointSlices, as kube-proxy would (the box has no Service network).

Use from a test module::

    from clusterbox.fixtures import installation  # noqa: F401  (a module-scoped fixture)

    def test_something(installation):
        installation.kubectl("apply", "-f", "examples/endpoints/03-e5.yaml")

or, for other scopes or values, `installed(tmp_path, values={...})` as a context manager.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .box import ClusterBox

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "infernetes"
CRDS = ROOT / "crds"
KUBECTL = "/usr/bin/kubectl"
NAMESPACE = "infernetes-system"
RELEASE = "infernetes"
# Room for the chart's operator and gateways (600m requested) and a few one-thread workers.
NODE_CPU, NODE_MEMORY = "4", "16Gi"


def crd_docs() -> list[dict[str, Any]]:
    """The project's CRDs (crds/*.yaml), as kubectl would read them."""
    return [yaml.safe_load(p.read_text()) for p in sorted(CRDS.glob("*.yaml"))]


def create_crds(api: httpx.Client) -> list[dict[str, Any]]:
    """The project's CRDs created through the API; each must be accepted (201)."""
    docs = crd_docs()
    for doc in docs:
        r = api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=doc)
        assert r.status_code == 201, r.text
    return docs


@contextlib.contextmanager
def api_box(namespaces: tuple[str, ...] = ()) -> Iterator[ClusterBox]:
    """A fresh box without controllers (tests write the pods and statuses themselves) holding the project's CRDs
    and the given namespaces; stopped when the block ends, also on failure."""
    box = ClusterBox(bookmark_interval=0.3, controllers=False).start()
    try:
        with box.client() as api:
            create_crds(api)
            for ns in namespaces:
                r = api.post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
                assert r.status_code == 201, r.text
        yield box
    finally:
        box.stop()


def render_chart(values: dict[str, Any] | None = None, namespace: str = NAMESPACE, release: str = RELEASE) -> list[dict[str, Any]]:
    """The chart's templates as `helm install` renders them (values.schema.json enforced); its
    CRDs are not among them (Helm installs crds/ separately: apply `CRDS` first)."""
    import helm_python

    out = helm_python.Chart.load(CHART).render(values or {}, name=release, namespace=namespace, is_install=True)
    return [d for name, text in sorted(out.items()) if not name.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]


@dataclass
class Installation:
    box: ClusterBox
    kubeconfig: Path
    namespace: str
    release: str
    documents: list[dict[str, Any]] = field(default_factory=list)
    cache_dir: Path | None = None

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120,
                namespace: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real kubectl against the box, in the installation's namespace unless told otherwise."""
        cmd = [KUBECTL, "--kubeconfig", str(self.kubeconfig), "-n", namespace or self.namespace]
        if self.cache_dir is not None:
            cmd += ["--cache-dir", str(self.cache_dir)]
        r = subprocess.run([*cmd, *args], input=input, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def client(self, token: str | None = None) -> httpx.Client:
        """An API client (the box's admin unless a token is given)."""
        return self.box.client(token)

    def deployments(self) -> list[str]:
        return [d["metadata"]["name"] for d in self.documents if d.get("kind") == "Deployment"]

    def wait_available(self, timeout: float = 300) -> None:
        """Every Deployment the chart made reports Available and has rolled out; on a timeout, the
        error says which pods are not ready and why (their states and last log lines)."""
        deadline = time.monotonic() + timeout
        with self.client() as api:
            while True:
                pending = [name for name in self.deployments() if not _rolled_out(api, self.namespace, name)]
                if not pending:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"not available after {timeout}s: {pending}\n{self.diagnose()}")
                time.sleep(0.2)

    def service_address(self, service: str, port: str | int | None = None, namespace: str | None = None,
                        timeout: float = 60) -> tuple[str, int]:
        """(ip, port) of a ready endpoint of the Service, from its EndpointSlices: where kube-proxy
        would send a connection to the Service's port (by name or number; the first if None)."""
        ns = namespace or self.namespace
        deadline = time.monotonic() + timeout
        with self.client() as api:
            while True:
                svc = api.get(f"/api/v1/namespaces/{ns}/services/{service}")
                if svc.status_code == 200:
                    ports = svc.json()["spec"].get("ports") or []
                    wanted = next((p for p in ports if port is None or port in (p.get("name"), p.get("port"))), None)
                    if wanted is None:
                        raise AssertionError(f"service {ns}/{service} has no port {port!r}: {ports}")
                    slices = api.get(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                                     params={"labelSelector": f"kubernetes.io/service-name={service}"}).json()["items"]
                    for s in slices:
                        number = next((p["port"] for p in s.get("ports") or () if p.get("name", "") == wanted.get("name", "")), None)
                        ready = [e for e in s.get("endpoints") or () if (e.get("conditions") or {}).get("ready")]
                        if number is not None and ready:
                            return ready[0]["addresses"][0], int(number)
                if time.monotonic() > deadline:
                    raise AssertionError(f"service {ns}/{service} has no ready endpoint after {timeout}s\n{self.diagnose()}")
                time.sleep(0.2)

    def service_url(self, service: str, port: str | int | None = None, namespace: str | None = None, scheme: str = "http") -> str:
        ip, number = self.service_address(service, port, namespace)
        return f"{scheme}://{ip}:{number}"

    def diagnose(self, namespace: str | None = None, log_lines: int = 20) -> str:
        """The pods of a namespace, their container states and their last log lines."""
        ns = namespace or self.namespace
        out = []
        with self.client() as api:
            for pod in api.get(f"/api/v1/namespaces/{ns}/pods").json()["items"]:
                name, status = pod["metadata"]["name"], pod.get("status") or {}
                conds = {c["type"]: c["status"] for c in status.get("conditions") or ()}
                out.append(f"pod {name}: phase={status.get('phase')} conditions={conds}")
                for cs in status.get("containerStatuses") or ():
                    out.append(f"  {cs['name']}: restarts={cs.get('restartCount')} state={json.dumps(cs.get('state'))}")
                    log = api.get(f"/api/v1/namespaces/{ns}/pods/{name}/log", params={"container": cs["name"], "tailLines": str(log_lines)})
                    if log.status_code == 200 and log.text:
                        out += [f"    | {line}" for line in log.text.splitlines()]
                sched = next((c for c in status.get("conditions") or () if c["type"] == "PodScheduled" and c["status"] == "False"), None)
                if sched:
                    out.append(f"  unschedulable: {sched.get('message')}")
        return "\n".join(out)


def _rolled_out(api: httpx.Client, namespace: str, name: str) -> bool:
    r = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    if r.status_code != 200:
        return False
    d = r.json()
    s = d.get("status") or {}
    want = int(d["spec"].get("replicas", 1))
    available = any(c["type"] == "Available" and c["status"] == "True" for c in s.get("conditions") or ())
    return (available and s.get("observedGeneration") == d["metadata"]["generation"] and s.get("updatedReplicas", 0) == want
            and s.get("availableReplicas", 0) == want and s.get("replicas", 0) == want)


def install(box: ClusterBox, workdir: Path, values: dict[str, Any] | None = None, namespace: str = NAMESPACE,
            release: str = RELEASE, wait: bool = True, timeout: float = 300) -> Installation:
    """`kubectl apply -f crds/`, the namespace, then the rendered chart, all through kubectl;
    with `wait`, until the chart's Deployments are available."""
    workdir.mkdir(parents=True, exist_ok=True)
    inst = Installation(box, box.write_kubeconfig(workdir / "kubeconfig", namespace=namespace), namespace, release,
                        render_chart(values, namespace, release), workdir / "kube-cache")
    inst.kubectl("apply", "-f", str(CRDS), namespace="default")
    inst.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s", namespace="default")
    inst.kubectl("apply", "-f", "-", input=yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
    inst.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(inst.documents))
    if wait:
        inst.wait_available(timeout)
    return inst


@contextlib.contextmanager
def installed(workdir: Path, values: dict[str, Any] | None = None, namespace: str = NAMESPACE, wait: bool = True,
              timeout: float = 300, **box_options: Any) -> Iterator[Installation]:
    """A box (controllers and kubelet on) with Infernetes installed; every pod's processes are
    stopped when the block ends, also on failure."""
    options = {"kubelet": True, "node_cpu": NODE_CPU, "node_memory": NODE_MEMORY, **box_options}
    box = ClusterBox(**options).start()
    try:
        yield install(box, workdir, values, namespace, wait=wait, timeout=timeout)
    finally:
        box.stop()


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    """Infernetes installed with the chart's default values, shared by a test module."""
    with installed(tmp_path_factory.mktemp("installation")) as inst:
        yield inst
