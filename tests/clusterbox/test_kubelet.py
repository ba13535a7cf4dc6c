"""The box's kubelet: pods run as real processes on their own loopback addresses, with init
containers, env, volumes, probes, restarts, deletion and logs as the real kubelet does them."""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from clusterbox import ClusterBox
from clusterbox.kubelet import mount_namespaces_available

from .conftest import wait_for

VENV_BIN = Path(sys.executable).parent
IMAGE = "box/python"
NS = "/api/v1/namespaces/default"

pytestmark = pytest.mark.slow  # every test starts processes


@pytest.fixture
def box() -> Iterator[ClusterBox]:
    b = ClusterBox(bookmark_interval=0.3, kubelet=True, images={IMAGE: VENV_BIN}, backoff_base=0.2).start()
    try:
        yield b
    finally:
        b.stop()


def py(code: str) -> list[str]:
    return ["python", "-c", textwrap.dedent(code)]


def container(name: str, command: list[str], **kw: Any) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "command": command, **kw}


def create_pod(api: httpx.Client, name: str, containers: list[dict[str, Any]], labels: dict[str, str] | None = None,
               **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": "box-node", "terminationGracePeriodSeconds": 5, "containers": containers, **spec}}
    r = api.post(f"{NS}/pods", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def pod(api: httpx.Client, name: str) -> dict[str, Any]:
    r = api.get(f"{NS}/pods/{name}")
    assert r.status_code == 200, r.text
    return r.json()


def status_of(api: httpx.Client, name: str, container_name: str | None = None, init: bool = False) -> dict[str, Any]:
    st = pod(api, name).get("status") or {}
    statuses = st.get("initContainerStatuses" if init else "containerStatuses") or []
    return next((c for c in statuses if container_name in (None, c["name"])), {})


def wait_phase(api: httpx.Client, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: (p := pod(api, name)).get("status", {}).get("phase") == phase and p, timeout, f"{name} {phase}")


def condition(p: dict[str, Any], type_: str) -> str | None:
    return next((c["status"] for c in (p.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def logs(api: httpx.Client, name: str, **params: str) -> str:
    r = api.get(f"{NS}/pods/{name}/log", params=params)
    assert r.status_code == 200, r.text
    return r.text


def events(api: httpx.Client, name: str) -> list[dict[str, Any]]:
    return [e for e in api.get(f"{NS}/events").json()["items"] if e["involvedObject"]["name"] == name]


SERVE_OWN_NAME = py("""
    import os
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = os.environ["HOSTNAME"].encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    HTTPServer(("0.0.0.0", 8080), H).serve_forever()
""")
# The same on uvloop (as uvicorn runs), whose servers bind in C: host None is every address.
SERVE_OWN_NAME_UVLOOP = py("""
    import asyncio, os, uvloop
    class Answer(asyncio.Protocol):
        def connection_made(self, transport):
            body = os.environ["HOSTNAME"].encode()
            transport.write(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
            transport.close()
    async def main():
        server = await asyncio.get_running_loop().create_server(Answer, None, 8080)
        print(*[s.getsockname()[0] for s in server.sockets], flush=True)
        await server.serve_forever()
    uvloop.run(main())
""")
# Run inside the pod: 127.0.0.1:8080 must be this pod's own server, not the other pod's.
REACHES_ITSELF = py("""
    import os, sys, urllib.request
    sys.exit(0 if urllib.request.urlopen("http://127.0.0.1:8080/", timeout=2).read().decode() == os.environ["HOSTNAME"] else 1)
""")


def test_two_pods_listen_on_the_same_port_each_on_its_own_address(api: httpx.Client) -> None:
    for name, serve in (("web-a", SERVE_OWN_NAME), ("web-b", SERVE_OWN_NAME_UVLOOP)):
        create_pod(api, name, [container("web", serve, readinessProbe={"exec": {"command": REACHES_ITSELF}, "periodSeconds": 1})])
    ips = {}
    for name in ("web-a", "web-b"):
        p = wait_for(lambda n=name: condition(pod(api, n), "Ready") == "True" and pod(api, n), 30, f"{name} Ready")
        st = p["status"]
        assert st["podIP"] == st["podIPs"][0]["ip"] and st["podIP"].startswith("127.") and st["podIP"] != "127.0.0.1"
        assert st["hostIP"] == "127.0.0.1"
        ips[name] = st["podIP"]
    assert ips["web-a"] != ips["web-b"]
    for name, ip in ips.items():
        assert httpx.get(f"http://{ip}:8080/", timeout=5).text == name
    assert logs(api, "web-b") == ips["web-b"] + "\n"  # the uvloop server's only socket: the pod's address


def test_init_containers_run_in_order_to_completion_before_the_containers(api: httpx.Client) -> None:
    append = "import sys; open('/scratch/work/order', 'a').write(sys.argv[1] + chr(10))"
    create_pod(api, "init-order", [container("main", py("print(open('/scratch/work/order').read(), end='', flush=True)"),
                                             volumeMounts=[{"name": "work", "mountPath": "/scratch/work"}])],
               initContainers=[container(f"init-{i}", ["python", "-c", append, f"init-{i}"],
                                         volumeMounts=[{"name": "work", "mountPath": "/scratch/work"}]) for i in (1, 2)],
               volumes=[{"name": "work", "emptyDir": {}}], restartPolicy="Never")
    p = wait_phase(api, "init-order", "Succeeded")
    assert logs(api, "init-order") == "init-1\ninit-2\n"
    assert [c["state"]["terminated"]["reason"] for c in p["status"]["initContainerStatuses"]] == ["Completed", "Completed"]
    assert condition(p, "Initialized") == "True"


@pytest.mark.skipif(not mount_namespaces_available(), reason="needs root, unshare and overlayfs (else the Python-only redirect)")
def test_native_programs_see_volumes_at_their_mount_paths(api: httpx.Client) -> None:
    """With a mount namespace per container, code that is not Python (here cat and sh; in the worker safetensors,
    tokenizers and torch) finds the volume at its mountPath, and the path is never made on the machine."""
    mount = "/var/lib/clusterbox-native-test/data"
    assert not os.path.lexists("/var/lib/clusterbox-native-test")
    create_pod(api, "native", [container("main", ["sh", "-c", f"cat {mount}/x && ls /var/lib | grep -c . >/dev/null"],
                                         volumeMounts=[{"name": "work", "mountPath": mount}])],
               initContainers=[container("write", ["sh", "-c", f"echo from-init > {mount}/x"],
                                         volumeMounts=[{"name": "work", "mountPath": mount}])],
               volumes=[{"name": "work", "emptyDir": {}}], restartPolicy="Never")
    wait_phase(api, "native", "Succeeded")
    assert logs(api, "native") == "from-init\n"
    assert not os.path.lexists("/var/lib/clusterbox-native-test"), "a mount point was made on the machine"


def test_a_failing_init_container_is_retried_and_holds_the_containers(api: httpx.Client) -> None:
    create_pod(api, "init-fails", [container("main", py("print('never')"))],
               initContainers=[container("setup", py("raise SystemExit(4)"))], restartPolicy="Always")
    init = wait_for(lambda: (s := status_of(api, "init-fails", "setup", init=True)).get("restartCount", 0) >= 1 and s, 30,
                    "the init container restarted")
    assert (init.get("lastState") or {}).get("terminated", {}).get("exitCode") == 4
    p = pod(api, "init-fails")
    assert p["status"]["phase"] == "Pending" and condition(p, "Initialized") == "False"
    assert "running" not in status_of(api, "init-fails", "main")["state"]
    r = api.get(f"{NS}/pods/init-fails/log", params={"container": "main"})
    assert r.status_code == 400 and "is waiting to start" in r.json()["message"]


def test_a_failed_init_container_fails_a_pod_that_never_restarts(api: httpx.Client) -> None:
    create_pod(api, "init-never", [container("main", py("print('never')"))],
               initContainers=[container("setup", py("raise SystemExit(5)"))], restartPolicy="Never")
    p = wait_phase(api, "init-never", "Failed")
    assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 5
    assert p["status"]["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}


def test_env_from_fields_secrets_and_config_maps_and_mounted_files(api: httpx.Client) -> None:
    api.post(f"{NS}/secrets", json={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                                    "data": {"password": base64.b64encode(b"s3cret").decode(),
                                             "token": base64.b64encode(b"tok").decode()}}).raise_for_status()
    api.post(f"{NS}/configmaps", json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                                       "data": {"mode": "fast", "LEVEL": "debug"}}).raise_for_status()
    show = py("""
        import json, os, stat, sys
        keys = ["POD_NAME", "POD_NAMESPACE", "POD_IP", "TEAM", "SA", "PASSWORD", "MODE", "CFG_LEVEL", "GREETING"]
        mode = stat.S_IMODE(os.stat("/etc/creds/pw").st_mode)
        print(json.dumps({"env": {k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:],
                          "pw": open("/etc/creds/pw").read(), "mode": oct(mode), "listing": sorted(os.listdir("/etc/creds")),
                          "mode_file": open("/etc/settings/mode").read(),
                          "sa_namespace": open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()}), flush=True)
    """)
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
           {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
           {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
           {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
           {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
           {"name": "GREETING", "value": "hello $(POD_NAME) $$(POD_NAME) $(UNDEFINED)"}]
    create_pod(api, "env", [container("show", show, args=["$(POD_NAMESPACE)/$(MODE)", "$$(MODE)"], env=env,
                                      envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                                      volumeMounts=[{"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                                                    {"name": "settings", "mountPath": "/etc/settings"}])],
               labels={"team": "search"}, restartPolicy="Never",
               volumes=[{"name": "creds", "secret": {"secretName": "creds", "items": [{"key": "password", "path": "pw"}],
                                                     "defaultMode": 0o400}},
                        {"name": "settings", "configMap": {"name": "settings"}}])
    p = wait_phase(api, "env", "Succeeded")
    out = json.loads(logs(api, "env"))
    assert out["env"] == {"POD_NAME": "env", "POD_NAMESPACE": "default", "POD_IP": p["status"]["podIP"], "TEAM": "search",
                          "SA": "default", "PASSWORD": "s3cret", "MODE": "fast", "CFG_LEVEL": "debug",
                          "GREETING": "hello env $(POD_NAME) $(UNDEFINED)"}
    assert out["argv"] == ["default/fast", "$(MODE)"]
    assert out["pw"] == "s3cret" and out["listing"] == ["pw"] and out["mode"] == "0o400"
    assert out["mode_file"] == "fast" and out["sa_namespace"] == "default"


def test_a_missing_secret_holds_the_container_with_an_event(api: httpx.Client) -> None:
    create_pod(api, "needs-secret", [container("c", py("print('ran', flush=True)"), env=[
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "later", "key": "x"}}}])], restartPolicy="Never")
    waiting = wait_for(lambda: status_of(api, "needs-secret").get("state", {}).get("waiting", {}).get("reason")
                       == "CreateContainerConfigError" and status_of(api, "needs-secret"), 30, "CreateContainerConfigError")
    assert 'secret "later" not found' in waiting["state"]["waiting"]["message"]
    api.post(f"{NS}/secrets", json={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"},
                                    "data": {"x": base64.b64encode(b"1").decode()}}).raise_for_status()
    wait_phase(api, "needs-secret", "Succeeded")
    assert logs(api, "needs-secret") == "ran\n"


def test_a_claim_is_one_folder_shared_by_the_pods_that_mount_it(api: httpx.Client) -> None:
    mount = {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}]
    create_pod(api, "writer", [container("w", py("open('/data/note', 'w').write('from writer')"), **mount)],
               volumes=volumes, restartPolicy="Never")
    wait_for(lambda: any(e["reason"] == "FailedMount" and 'persistentvolumeclaim "shared" not found' in e["message"]
                         for e in events(api, "writer")), 30, "FailedMount event")
    assert pod(api, "writer")["status"]["phase"] == "Pending"
    api.post(f"{NS}/persistentvolumeclaims", json={
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Mi"}}}}).raise_for_status()
    wait_phase(api, "writer", "Succeeded")
    create_pod(api, "reader", [container("r", py("print(open('/data/note').read(), flush=True)"), **mount)],
               volumes=volumes, restartPolicy="Never")
    wait_phase(api, "reader", "Succeeded")
    assert logs(api, "reader") == "from writer\n"


def test_readiness_probe_flips_ready_both_ways(api: httpx.Client, tmp_path: Path) -> None:
    flag = tmp_path / "ready"  # a path of the test machine (no volume covers it): the test flips the answer
    serve = py(f"""
        import os
        from http.server import BaseHTTPRequestHandler, HTTPServer
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if os.path.exists({str(flag)!r}) else 503); self.end_headers()
            def log_message(self, *a): pass
        HTTPServer(("", 8080), H).serve_forever()
    """)
    probe = {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1}
    create_pod(api, "flips", [container("web", serve, ports=[{"name": "http", "containerPort": 8080}], readinessProbe=probe)])
    wait_phase(api, "flips", "Running")
    assert condition(pod(api, "flips"), "Ready") == "False"
    flag.write_text("")
    wait_for(lambda: condition(pod(api, "flips"), "Ready") == "True", 30, "Ready")
    assert condition(pod(api, "flips"), "ContainersReady") == "True" and status_of(api, "flips")["ready"] is True
    flag.unlink()
    wait_for(lambda: condition(pod(api, "flips"), "Ready") == "False", 30, "not Ready again")
    assert status_of(api, "flips")["restartCount"] == 0  # readiness never restarts


def test_liveness_failure_kills_and_restarts_the_container(api: httpx.Client) -> None:
    probe = {"tcpSocket": {"port": 8081}, "periodSeconds": 1, "failureThreshold": 2}
    create_pod(api, "not-live", [container("c", py("import time; print('up', flush=True); time.sleep(120)"), livenessProbe=probe)])
    st = wait_for(lambda: (s := status_of(api, "not-live")).get("restartCount", 0) >= 1 and s, 30, "a restart")
    assert st["lastState"]["terminated"]["exitCode"] == 128 + signal.SIGTERM
    assert any(e["reason"] == "Killing" and "failed liveness probe" in e["message"] for e in events(api, "not-live"))
    assert any(e["reason"] == "Unhealthy" for e in events(api, "not-live"))


def test_startup_probe_gates_readiness_and_started(api: httpx.Client, tmp_path: Path) -> None:
    flag = tmp_path / "started"
    check = ["python", "-c", f"import os, sys; sys.exit(0 if os.path.exists({str(flag)!r}) else 1)"]
    create_pod(api, "slow-start", [container("c", py("import time; time.sleep(120)"),
                                             startupProbe={"exec": {"command": check}, "periodSeconds": 1, "failureThreshold": 60})])
    wait_phase(api, "slow-start", "Running")
    st = status_of(api, "slow-start")
    assert st["started"] is False and st["ready"] is False
    flag.write_text("")
    wait_for(lambda: status_of(api, "slow-start").get("started") is True, 30, "started")
    wait_for(lambda: condition(pod(api, "slow-start"), "Ready") == "True", 30, "Ready once started")


def test_crash_loop_back_off_with_exit_code_and_termination_messages(api: httpx.Client) -> None:
    create_pod(api, "crashy", [
        container("msg", py("open('/dev/termination-log', 'w').write('disk on fire'); raise SystemExit(3)")),
        container("logs", py("import sys; print('last words', file=sys.stderr); raise SystemExit(2)"),
                  terminationMessagePolicy="FallbackToLogsOnError")])
    for name, code, message in (("msg", 3, "disk on fire"), ("logs", 2, "last words\n")):
        st = wait_for(lambda n=name: (s := status_of(api, "crashy", n)).get("restartCount", 0) >= 1
                      and s.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff" and s, 30, "CrashLoopBackOff")
        last = st["lastState"]["terminated"]
        assert (last["exitCode"], last["reason"], last["message"]) == (code, "Error", message)
        assert "back-off" in st["state"]["waiting"]["message"]
    p = pod(api, "crashy")
    assert p["status"]["phase"] == "Running" and condition(p, "Ready") == "False"
    # The back-off doubles (base 0.2 s here, 10 s in Kubernetes): the second wait is 400ms.
    st = wait_for(lambda: (s := status_of(api, "crashy", "msg")).get("restartCount", 0) >= 2
                  and s.get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff" and s, 30, "a second back-off")
    assert st["state"]["waiting"]["message"].startswith("back-off 400ms restarting failed container=msg pod=crashy_default(")


def test_an_unknown_image_is_never_run(api: httpx.Client) -> None:
    create_pod(api, "no-image", [container("c", py("print('ran')"), image="registry.example/nope:1")])
    seen = set()

    def backed_off() -> bool:
        seen.add(status_of(api, "no-image").get("state", {}).get("waiting", {}).get("reason"))
        return "ImagePullBackOff" in seen
    wait_for(backed_off, 30, "ImagePullBackOff")
    assert any(e["reason"] == "Failed" and 'Failed to pull image "registry.example/nope:1"' in e["message"]
               for e in events(api, "no-image"))
    assert pod(api, "no-image")["status"]["phase"] == "Pending"
    r = api.get(f"{NS}/pods/no-image/log")
    assert r.status_code == 400 and "is waiting to start: " in r.json()["message"]


def test_deleting_a_pod_stops_its_whole_process_tree_after_the_grace_period(api: httpx.Client) -> None:
    # The container ignores SIGTERM and starts a child in its group and a grandchild in a session of its own.
    stubborn = py("""
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        escaped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
        print(os.getpid(), child.pid, escaped.pid, flush=True)
        time.sleep(300)
    """)
    create_pod(api, "stubborn", [container("c", stubborn)], terminationGracePeriodSeconds=1)
    line = wait_for(lambda: api.get(f"{NS}/pods/stubborn/log").text.strip(), 30, "the pids")
    procs = [psutil.Process(int(p)) for p in line.split()]
    assert all(p.is_running() for p in procs)
    r = api.delete(f"{NS}/pods/stubborn")
    assert r.status_code == 200 and r.json()["metadata"]["deletionGracePeriodSeconds"] == 1
    assert pod(api, "stubborn")["metadata"]["deletionTimestamp"]  # held while the kubelet stops it
    wait_for(lambda: api.get(f"{NS}/pods/stubborn").status_code == 404, 30, "the pod gone")
    for p in procs:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE, p


def test_what_a_container_leaves_running_ends_with_it(api: httpx.Client) -> None:
    leaves = py("""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        print(child.pid, flush=True)
    """)
    create_pod(api, "leaves", [container("c", leaves)], restartPolicy="Never")
    wait_phase(api, "leaves", "Succeeded")
    child = int(logs(api, "leaves"))
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE, 10, "the child gone")


def test_stopping_the_box_kills_every_pod(tmp_path: Path) -> None:
    b = ClusterBox(kubelet=True, images={IMAGE: VENV_BIN}).start()
    try:
        with b.client() as c:
            create_pod(c, "left", [container("c", py("import os, time; print(os.getpid(), flush=True); time.sleep(300)"))])
            pid = int(wait_for(lambda: c.get(f"{NS}/pods/left/log").text.strip(), 30, "the pid"))
    finally:
        b.stop()
    with pytest.raises(psutil.NoSuchProcess):
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            raise psutil.NoSuchProcess(pid)


def test_kubectl_logs(api: httpx.Client, kubectl: Any) -> None:
    # The first run says so and fails; the restarted one (same emptyDir) says so and stays up.
    talk = py("""
        import os, time
        first = not os.path.exists("/state/ran")
        open("/state/ran", "w").close()
        print("first run" if first else "second run", flush=True)
        if first:
            raise SystemExit(1)
        time.sleep(300)
    """)
    create_pod(api, "talks", [container("c", talk, volumeMounts=[{"name": "state", "mountPath": "/state"}])],
               volumes=[{"name": "state", "emptyDir": {}}])
    wait_for(lambda: status_of(api, "talks").get("restartCount", 0) >= 1 and logs(api, "talks"), 30, "the second run's output")
    assert kubectl("logs", "talks").stdout == "second run\n"
    assert kubectl("logs", "talks", "--previous").stdout == "first run\n"
    assert kubectl("logs", "talks", "-c", "c", "--tail=1").stdout == "second run\n"
    assert kubectl("logs", "talks", "--previous", "-f").stdout == "first run\n"  # follows until that container's end
    missing = kubectl("logs", "talks", "-c", "nope", check=False)
    assert missing.returncode != 0 and "container nope is not valid for pod talks" in missing.stderr
    shown = kubectl("get", "pod", "talks", "-o", "jsonpath={.status.containerStatuses[0].lastState.terminated.exitCode}")
    assert shown.stdout == "1"


def test_a_deployments_pods_run_and_serve_through_the_services_endpoints(api: httpx.Client) -> None:
    labels = {"app": "web"}
    api.post("/apis/apps/v1/namespaces/default/deployments", json={
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [container("web", SERVE_OWN_NAME, ports=[{"name": "http", "containerPort": 8080}],
                                     readinessProbe={"tcpSocket": {"port": "http"}, "periodSeconds": 1})]}}}}).raise_for_status()
    api.post(f"{NS}/services", json={"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                                     "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}}).raise_for_status()

    def ready_endpoints() -> list[str]:
        slices = api.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                         params={"labelSelector": "kubernetes.io/service-name=web"}).json()["items"]
        return sorted(a for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")
                      for a in e["addresses"])
    addresses = wait_for(lambda: len(ready_endpoints()) == 2 and ready_endpoints(), 30, "two ready endpoints")
    names = sorted(p["metadata"]["name"] for p in api.get(f"{NS}/pods", params={"labelSelector": "app=web"}).json()["items"])
    assert sorted(httpx.get(f"http://{a}:8080/", timeout=5).text for a in addresses) == names
    d = wait_for(lambda: (x := api.get("/apis/apps/v1/namespaces/default/deployments/web").json())
                 .get("status", {}).get("readyReplicas") == 2 and x, 30, "readyReplicas 2")
    assert d["status"]["availableReplicas"] == 2
    api.patch("/apis/apps/v1/namespaces/default/deployments/web/scale", json={"spec": {"replicas": 1}},
              headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()
    wait_for(lambda: len(api.get(f"{NS}/pods", params={"labelSelector": "app=web"}).json()["items"]) == 1, 30, "one pod left")
    assert len(ready_endpoints()) == 1


def test_a_pod_reaches_the_api_server_as_its_service_account(api: httpx.Client) -> None:
    call = py("""
        import json, os, ssl, urllib.error, urllib.request
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        token = open(sa + "/token").read()
        ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
        url = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}/api/v1/namespaces/default/pods"
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer " + token}), context=ctx)
        except urllib.error.HTTPError as e:
            print(e.code, json.load(e)["message"], flush=True)
    """)
    create_pod(api, "asks", [container("c", call)], restartPolicy="Never")
    wait_phase(api, "asks", "Succeeded")
    assert logs(api, "asks") == ('403 pods is forbidden: User "system:serviceaccount:default:default" cannot list resource '
                                 '"pods" in API group "" in the namespace "default"\n')
