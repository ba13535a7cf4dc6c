"""End to end on the cluster box (issue 11 item 4): Infernetes installed as a user installs it — the
CRDs, then the Helm chart rendered by a real Helm (helm-python-sdk) and applied with the real
kubectl — with the operator, the gateways and the model workers running as pods of the box (real
processes of this project's venv, each on its own loopback address). Endpoints are applied with
kubectl, inference goes through the gateway Service with the official `elasticsearch` client.

The tests of this module run in order on one installation (a module fixture): each step is what a
user would do next. Two small real models: MiniLM (as the E5 stand-in) and the 2-layer SPLADE
encoder (as the ELSER stand-in), seeded into the pods from a data directory as the chart's
`modelCache.seedDir` does for air-gapped clusters (there is no model hub here).

The box has no Service network: `ServiceProxy` stands in for kube-proxy, resolving the Service to
a ready pod through its EndpointSlices for every new connection, so that rolling updates are seen
as a client in a cluster sees them.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from elasticsearch import Elasticsearch

from clusterbox.conftest import wait_for
from clusterbox.fixtures import ROOT, Installation, installed, render_chart

from infernetes.operator.demo import DEMO_MODELS
from infernetes.worker.modelstore import ModelStore

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/usr/bin/kubectl").exists(), reason="needs kubectl")]

EXAMPLES = ROOT / "examples" / "endpoints"
SEEDED = (".multilingual-e5-small", ".elser_model_2")
VALUES: dict[str, Any] = {
    "gateway": {"replicas": 2},
    # Fast autoscaling, so that scale-up, scale to zero and the wake-up fit in a test.
    # A declared model that no hub here has: its worker pods fail at start (the pull in their init container).
    "models": {"unreachable-model": {"repo": "nobody/unreachable-model", "task_type": "text_embedding"}},
    "workers": {"autoscaler": {"intervalSeconds": 0.5, "scaleDownWindowSeconds": 2, "scaleToZeroAfterSeconds": 3},
                "drainTimeoutSeconds": 5},
}
CEILING = 240.0  # a ceiling for what waits on model loading (busy machine), never a pace


# ---- kube-proxy's stand-in --------------------------------------------------------------------

class ServiceProxy:
    """Listens on 127.0.0.1 and forwards each new connection to a ready endpoint of the Service
    (round robin over the EndpointSlices' ready addresses, re-read every 0.2 s), as kube-proxy does
    for a ClusterIP."""

    def __init__(self, inst: Installation, service: str, port: str) -> None:
        self.inst, self.service, self.port_name = inst, service, port
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._targets: list[tuple[str, int]] = []
        self._turn = 0
        self._threads = [threading.Thread(target=self._refresh, daemon=True), threading.Thread(target=self._accept, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _refresh(self) -> None:
        with self.inst.client() as api:
            while not self._stop.is_set():
                slices = api.get(f"/apis/discovery.k8s.io/v1/namespaces/{self.inst.namespace}/endpointslices",
                                 params={"labelSelector": f"kubernetes.io/service-name={self.service}"})
                targets = []
                for s in slices.json().get("items", []) if slices.status_code == 200 else []:
                    number = next((p["port"] for p in s.get("ports") or () if p.get("name") == self.port_name), None)
                    for e in s.get("endpoints") or ():
                        if number is not None and (e.get("conditions") or {}).get("ready"):
                            targets += [(a, int(number)) for a in e["addresses"]]
                self._targets = targets
                self._stop.wait(0.2)

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        targets = self._targets
        if not targets:
            conn.close()  # no ready endpoint: kube-proxy rejects the connection
            return
        self._turn += 1
        try:
            upstream = socket.create_connection(targets[self._turn % len(targets)], timeout=5)
        except OSError:
            conn.close()
            return
        upstream.settimeout(None)
        pair = {conn: upstream, upstream: conn}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(list(pair), [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    pair[s].sendall(data)
        except OSError:
            return
        finally:
            conn.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for t in self._threads:
            t.join(5)


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seed() -> Path:
    """A data directory with the two stand-in models, as baked into an image for `modelCache.seedDir`. Kept
    in the user's cache (like the Eland venv), outside /tmp: the pods mount their own emptyDir at /tmp."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infernetes" / "e2e-seed"
    root.mkdir(parents=True, exist_ok=True)
    store = ModelStore(root / "models")
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two suites at once import each model once
        for model_id in SEEDED:
            if store.get(model_id) is not None:
                continue
            find, task, _package, overrides = DEMO_MODELS[model_id]
            folder = find()
            if folder is None:
                pytest.skip(f"the demo model package for {model_id} is not installed")
            store.import_folder(folder, model_id, task_type=task, overrides=overrides)
    return root


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, seed: Path) -> Iterator[Installation]:
    values = {**VALUES, "modelCache": {"seedDir": str(seed)}}
    with installed(tmp_path_factory.mktemp("e2e"), values=values, node_cpu="8", timeout=CEILING) as installation:
        yield installation


@pytest.fixture(scope="module")
def gateway(inst: Installation) -> Iterator[ServiceProxy]:
    proxy = ServiceProxy(inst, "infernetes", "http")
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def es(inst: Installation, gateway: ServiceProxy) -> Iterator[Elasticsearch]:
    """The official client with the API key the chart generated (read as NOTES.txt says)."""
    encoded = inst.kubectl("get", "secret", "infernetes-api-keys", "-o", "jsonpath={.data.encoded}").stdout
    client = Elasticsearch(gateway.url, api_key=base64.b64decode(encoded).decode(), request_timeout=CEILING,
                           retry_on_timeout=False)
    try:
        yield client
    finally:
        client.close()


# ---- helpers ------------------------------------------------------------------------------------

def wait_until(predicate: Callable[[], Any], what: str, inst: Installation, timeout: float = CEILING) -> Any:
    """The box tests' wait_for, with the pods' states and logs in the error."""
    try:
        return wait_for(predicate, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{inst.diagnose()}") from None


def kubectl_wait(inst: Installation, condition: str, name: str) -> None:
    """`kubectl wait`, and on a timeout what the endpoint's status and the pods say."""
    r = inst.kubectl("wait", f"--for=condition={condition}", name, f"--timeout={int(CEILING)}s", timeout=CEILING + 30,
                     check=False)
    if r.returncode != 0:
        status = inst.kubectl("get", name, "-o", "jsonpath={.status}", check=False).stdout
        raise AssertionError(f"kubectl wait {condition} {name}: {r.stderr}\nstatus: {status}\n{inst.diagnose()}")


def get(inst: Installation, path: str) -> dict[str, Any]:
    with inst.client() as api:
        r = api.get(path)
        return r.json() if r.status_code == 200 else {}


def worker_deployments(inst: Installation) -> dict[str, dict[str, Any]]:
    items = get(inst, f"/apis/apps/v1/namespaces/{inst.namespace}/deployments").get("items", [])
    return {d["metadata"]["name"]: d for d in items if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "worker"
            or "infernetes.dev/deployment" in d["metadata"].get("labels", {})}


def workload_of(inst: Installation, endpoint: str) -> dict[str, Any] | None:
    """The worker Deployment serving the endpoint (the owner reference chain: Deployment -> CR)."""
    cr = get(inst, f"/apis/infernetes.dev/v1alpha1/namespaces/{inst.namespace}/inferenceendpoints/{endpoint}")
    uid = cr.get("metadata", {}).get("uid")
    for d in worker_deployments(inst).values():
        if any(o.get("uid") == uid for o in d["metadata"].get("ownerReferences") or ()):
            return d
    return None


def ready_replicas(inst: Installation, endpoint: str) -> tuple[int | None, int]:
    d = workload_of(inst, endpoint)
    if d is None:
        return None, 0
    return d["spec"].get("replicas"), int((d.get("status") or {}).get("readyReplicas") or 0)


def apply(inst: Installation, doc: dict[str, Any] | str) -> None:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    inst.kubectl("apply", "--server-side", "--field-manager=e2e", "-f", "-", input=text)


def example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


# ---- the steps ----------------------------------------------------------------------------------

def test_the_pages_six_request_bodies_pass_the_api_servers_validation(inst: Installation) -> None:
    """All six examples (the Elasticsearch page's bodies as InferenceEndpoints, and the ModelDeployment
    of the last one) are accepted by the API server's schema, defaulting and CEL rules."""
    out = inst.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(EXAMPLES)).stdout
    assert out.count("(server dry run)") == 7, out


def test_an_endpoint_applied_with_kubectl_turns_ready_and_serves_the_es_client(inst: Installation, es: Elasticsearch) -> None:
    for doc in example("03-e5.yaml"):
        apply(inst, doc)
    kubectl_wait(inst, "Ready", "ie/my-e5-model")
    out = es.inference.inference(inference_id="my-e5-model", task_type="text_embedding", input=["hello", "bonjour"])
    vectors = [e["embedding"] for e in out["text_embedding"]]
    assert [len(v) for v in vectors] == [384, 384] and vectors[0] != vectors[1]
    listed = es.inference.get(inference_id="my-e5-model")["endpoints"][0]
    assert listed["service_settings"]["model_id"] == ".multilingual-e5-small"


def test_num_allocations_changed_with_kubectl_scales_the_workers(inst: Installation, es: Elasticsearch) -> None:
    inst.kubectl("patch", "ie/my-e5-model", "--type=merge", "-p", json.dumps({"spec": {"service_settings": {"num_allocations": 2}}}))
    wait_until(lambda: ready_replicas(inst, "my-e5-model") == (2, 2), "two ready workers", inst)
    stats = es.ml.get_trained_models_stats(model_id="my-e5-model")["trained_model_stats"][0]["deployment_stats"]
    assert stats["allocation_status"]["allocation_count"] == 2
    inst.kubectl("patch", "ie/my-e5-model", "--type=merge", "-p", json.dumps({"spec": {"service_settings": {"num_allocations": 1}}}))
    wait_until(lambda: ready_replicas(inst, "my-e5-model") == (1, 1), "back to one worker", inst)


def test_adaptive_allocations_scale_to_zero_and_a_request_at_zero_is_held_and_answered(inst: Installation,
                                                                                    es: Elasticsearch) -> None:
    doc = example("01-elser-adaptive.yaml")[0]
    doc["metadata"]["name"] = "elser-from-zero"
    doc["spec"]["service_settings"]["adaptive_allocations"] = {"enabled": True, "min_number_of_allocations": 0,
                                                               "max_number_of_allocations": 2}
    apply(inst, doc)
    wait_until(lambda: (w := workload_of(inst, "elser-from-zero")) is not None and w["spec"].get("replicas") == 0,
               "the idle adaptive endpoint at zero replicas", inst)
    started = time.monotonic()
    out = es.inference.inference(inference_id="elser-from-zero", task_type="sparse_embedding", input="northern lights")
    assert out["sparse_embedding"][0]["embedding"], out
    print(f"wake-up from zero answered in {time.monotonic() - started:.1f} s")
    idle = time.monotonic()
    wait_until(lambda: ready_replicas(inst, "elser-from-zero")[0] == 0, "scale back to zero when idle", inst)
    print(f"back to zero {time.monotonic() - idle:.1f} s after the request")


@pytest.mark.skipif(os.environ.get("INFERNETES_E2E_FULL") != "1",
                    reason="about 3.5 min on 2 cores (a second worker starts under load, then both drain): "
                           "INFERNETES_E2E_FULL=1 runs it")
def test_adaptive_allocations_scale_up_under_load_and_back_to_zero(inst: Installation, es: Elasticsearch) -> None:
    doc = example("01-elser-adaptive.yaml")[0]
    doc["metadata"]["name"] = "elser-under-load"
    doc["spec"]["service_settings"]["adaptive_allocations"] = {"enabled": True, "min_number_of_allocations": 1,
                                                               "max_number_of_allocations": 2}
    apply(inst, doc)
    kubectl_wait(inst, "Ready", "ie/elser-under-load")
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            es.inference.inference(inference_id="elser-under-load", task_type="sparse_embedding",
                                   input=["a long passage about the aurora borealis and the solar wind"] * 16)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(hammer) for _ in range(8)]
        try:
            wait_until(lambda: (ready_replicas(inst, "elser-under-load")[0] or 0) >= 2, "a scale-up under load", inst)
        finally:
            stop.set()
        for f in futures:
            f.result()
    inst.kubectl("patch", "ie/elser-under-load", "--type=merge", "-p", json.dumps({"spec": {"service_settings": {
        "adaptive_allocations": {"enabled": True, "min_number_of_allocations": 0, "max_number_of_allocations": 2}}}}))
    wait_until(lambda: ready_replicas(inst, "elser-under-load")[0] == 0, "scale back to zero when idle", inst)


def test_the_operator_restarted_midway_picks_up_what_changed_meanwhile(inst: Installation) -> None:
    with inst.client() as api:
        pods = api.get(f"/api/v1/namespaces/{inst.namespace}/pods",
                       params={"labelSelector": "app.kubernetes.io/component=operator"}).json()["items"]
    assert len(pods) == 1
    old = pods[0]["metadata"]["name"]
    inst.kubectl("delete", "pod", old, "--wait=false")
    # Changed while the operator is away (or starting): the new one must reconcile it.
    inst.kubectl("patch", "ie/my-e5-model", "--type=merge", "-p", json.dumps({"spec": {"service_settings": {"num_allocations": 2}}}))
    wait_until(lambda: ready_replicas(inst, "my-e5-model") == (2, 2), "the change applied by the new operator", inst)
    names = [p["metadata"]["name"] for p in get(inst, f"/api/v1/namespaces/{inst.namespace}/pods?labelSelector="
                                                      "app.kubernetes.io/component%3Doperator").get("items", [])]
    assert old not in names and len(names) == 1


def test_dropped_watches_and_throttling_are_survived(inst: Installation) -> None:
    """Every watch stream is cut and the next API requests answer 429 with Retry-After: the operator
    resumes its watches and still applies the next change."""
    inst.box.faults.inject("429", count=6, retry_after=1)
    assert inst.box.faults.drop_watches() > 0
    inst.kubectl("patch", "ie/my-e5-model", "--type=merge", "-p", json.dumps({"spec": {"service_settings": {"num_allocations": 1}}}))
    wait_until(lambda: ready_replicas(inst, "my-e5-model") == (1, 1), "the change applied after the faults", inst)
    assert inst.box.faults.served.get("429", 0) >= 1


def test_a_rolling_gateway_upgrade_loses_no_request(inst: Installation, es: Elasticsearch) -> None:
    """`helm upgrade` that changes the gateway's pod template (here a pod annotation) replaces both gateway
    pods one at a time while requests flow through the Service: none fails."""
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                es.inference.inference(inference_id="my-e5-model", task_type="text_embedding", input="rolling")
                answered += 1
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                failures.append(repr(exc))
    before = {p["metadata"]["name"] for p in get(inst, f"/api/v1/namespaces/{inst.namespace}/pods?labelSelector="
                                                        "app.kubernetes.io/component%3Dgateway")["items"]}
    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        upgraded = installed_documents(inst, {**VALUES, "modelCache": {"seedDir": seed_dir(inst)},
                                              "gateway": {**VALUES["gateway"], "podAnnotations": {"e2e/upgrade": "1"}}})
        inst.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(upgraded))
        inst.wait_available(CEILING)
        wait_until(lambda: not before & {p["metadata"]["name"] for p in get(
            inst, f"/api/v1/namespaces/{inst.namespace}/pods?labelSelector=app.kubernetes.io/component%3Dgateway")["items"]},
            "the old gateway pods gone", inst)
    finally:
        stop.set()
        thread.join(CEILING)
    print(f"rolling upgrade: {answered} requests answered, {len(failures)} failed")
    assert answered > 0 and not failures, failures[:5]


def test_a_worker_that_fails_at_start_shows_a_failed_condition(inst: Installation) -> None:
    apply(inst, {"apiVersion": "infernetes.dev/v1alpha1", "kind": "InferenceEndpoint", "metadata": {"name": "broken-model-endpoint"},
                 "spec": {"task_type": "text_embedding", "service": "elasticsearch",
                          "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": "unreachable-model"}}})
    kubectl_wait(inst, "Ready=False", "ie/broken-model-endpoint")

    failures = ("ModelPullFailed", "CrashLoopBackOff", "InitCrashLoopBackOff")

    def failed() -> dict[str, Any] | None:
        cr = get(inst, f"/apis/infernetes.dev/v1alpha1/namespaces/{inst.namespace}/inferenceendpoints/broken-model-endpoint")
        ready = next((c for c in cr.get("status", {}).get("conditions") or () if c["type"] == "Ready"), {})
        return cr["status"] if ready.get("reason") in failures else None
    status = wait_until(failed, f"Ready=False with one of the reasons {failures}", inst)
    assert "unreachable-model" in status["reason"], status
    assert not workload_of(inst, "broken-model-endpoint")["status"].get("readyReplicas")


def test_kubectl_delete_leaves_nothing_behind(inst: Installation) -> None:
    inst.kubectl("delete", "ie", "--all", f"--timeout={int(CEILING)}s", timeout=CEILING + 30)
    inst.kubectl("delete", "modeldeployments", "--all", f"--timeout={int(CEILING)}s", timeout=CEILING + 30)
    wait_until(lambda: not worker_deployments(inst), "worker Deployments collected", inst)
    managed = "app.kubernetes.io/managed-by%3Dinfernetes"
    for kind in ("api/v1/namespaces/{ns}/services", "api/v1/namespaces/{ns}/pods", "apis/apps/v1/namespaces/{ns}/replicasets"):
        path = "/" + kind.format(ns=inst.namespace) + f"?labelSelector={managed}"
        wait_until(lambda path=path: not get(inst, path).get("items"), f"nothing left at {path}", inst)
    # Then the chart itself, as `helm uninstall` does: the namespace ends with no pod running.
    inst.kubectl("delete", "-f", "-", f"--timeout={int(CEILING)}s", input=yaml.safe_dump_all(inst.documents), timeout=CEILING + 30)
    wait_until(lambda: not get(inst, f"/api/v1/namespaces/{inst.namespace}/pods").get("items"), "every pod gone", inst)


# ---- the chart again, as `helm upgrade` renders it ----------------------------------------------

def seed_dir(inst: Installation) -> str:
    cm = get(inst, f"/api/v1/namespaces/{inst.namespace}/configmaps")
    for item in cm.get("items", []):
        for text in (item.get("data") or {}).values():
            for line in text.splitlines():
                if line.strip().startswith("seed_dir:"):
                    return line.split(":", 1)[1].strip()
    raise AssertionError("the chart's configmap names no seed_dir")


def installed_documents(inst: Installation, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart rendered again with new values. Its generated Secrets (API keys, worker credential) are left
    out: `helm upgrade` keeps them through `lookup`, which a render without a cluster cannot do."""
    return [d for d in render_chart(values, inst.namespace, inst.release) if d.get("kind") != "Secret"]
