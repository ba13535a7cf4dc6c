"""The box's kubelet: runs the pods bound to the box's node as real local processes.

Each pod gets its own loopback address (a random 127.a.b.0/24 per box, so two boxes on one machine
never share an address), written to status.podIP/podIPs. Namespaces are stood in for by
podsite/sitecustomize.py, put first on every container's PYTHONPATH: wildcard and loopback binds
land on the pod's address and loopback connections reach the pod itself (the network namespace),
and Python's file APIs see each volume at its mountPath (the mount namespace). An image is a known
name in the box's image map (this project's venv); any other name is ErrImagePull/ImagePullBackOff.

What it models: init containers in order, then the containers with command/args/env ($(VAR)
expansion, fieldRef, secretKeyRef, configMapKeyRef, envFrom); emptyDir, secret, configMap,
projected (serviceAccountToken, secret, configMap, downwardAPI) and persistentVolumeClaim volumes
as folders (a PVC's folder is shared by every pod that mounts the claim); the service-account
token mounted at /var/run/secrets/kubernetes.io/serviceaccount unless automount is off; startup,
readiness and liveness probes (httpGet, tcpSocket, exec) with their timings and thresholds;
restarts per restartPolicy with exponential back-off and CrashLoopBackOff; exit codes, reasons and
termination messages; graceful deletion (SIGTERM, the grace period, SIGKILL of the process group
and every descendant); container logs for `kubectl logs`.

What it does not model: real network and mount namespaces (native code and non-Python programs
see the machine as it is: a Rust tokenizer or safetensors opening a file under a mountPath does not
find it), Service virtual IPs and cluster DNS, cgroups (no CPU or memory limit is enforced, so no
OOMKilled), securityContext (processes run as the test's user, root filesystems are writable),
hostNetwork, image contents, image changes of a running pod, preStop/postStart hooks, gRPC probes,
ephemeral containers, sidecar init containers (restartPolicy: Always on an init container), the
admission plugin that adds the token volume to the spec (the kubelet mounts the token itself).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import ipaddress
import json
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import patching
from .rbac import User
from .server import ApiError, ApiServer, Request, Watcher

PODSITE = Path(__file__).resolve().parent / "podsite"
ROOT = Path(__file__).resolve().parents[2]
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
NODE_USER = User("system:node:box-node", ("system:nodes", "system:authenticated"))
MAX_MESSAGE = 4096


@dataclasses.dataclass(frozen=True)
class Image:
    """What the box runs for an image name: programs from a venv's bin folder, the image's
    ENTRYPOINT and CMD (used when a container gives no command/args) and WORKDIR."""

    bin: Path
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str | None = None


def default_images() -> dict[str, Image]:
    venv = ROOT / ".venv" / "bin"
    # The project's own image (Dockerfile: ENTRYPOINT infernetes, CMD operator, WORKDIR /tmp), any tag.
    return {"ghcr.io/infernetes/infernetes": Image(venv, ("infernetes",), ("operator",), "/tmp")}


def _image_for(images: Mapping[str, Image], name: str) -> Image | None:
    if name in images:
        return images[name]
    repo = name.rsplit("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    return images.get(repo)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, unknown ones kept as written, and
    `$$` is an escaped `$` (so `$$(VAR)` stays literally `$(VAR)`)."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2:end]
                    out.append(env[name] if name in env else text[i:end + 1])
                    i = end + 1
                    continue
        out.append(c)
        i += 1
    return "".join(out)


def _now() -> str:
    return patching.now()


class PodError(Exception):
    """A pod the kubelet cannot start yet: (reason, message) for the waiting state and an event."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclasses.dataclass
class Container:
    spec: dict[str, Any]
    init: bool
    restart_count: int = 0
    state: dict[str, Any] = dataclasses.field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = dataclasses.field(default_factory=dict)
    ready: bool = False
    started: bool = False
    proc: asyncio.subprocess.Process | None = None
    log: Path | None = None
    previous_log: Path | None = None
    container_id: str = ""
    backoff: int = 0  # restarts since the back-off last started over

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self, image: str) -> dict[str, Any]:
        s: dict[str, Any] = {"name": self.name, "image": image, "imageID": f"box://{image}" if self.container_id else "",
                             "ready": self.ready, "restartCount": self.restart_count, "state": self.state,
                             "lastState": self.last_state}
        if self.container_id:
            s["containerID"] = self.container_id
        if not self.init:
            s["started"] = self.started
        return s


def _descendants(pid: int) -> list[Any]:
    import psutil
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_tree(pid: int, sig: int, known: list[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for p in known:
        with contextlib.suppress(Exception):
            p.send_signal(sig)


class PodRunner:
    """One pod: its folder, address, volumes and containers, run by one asyncio task."""

    def __init__(self, kubelet: Kubelet, pod: dict[str, Any], ip: str):
        self.k = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.ip = ip
        self.dir = kubelet.root / "pods" / self.uid
        spec = pod.get("spec") or {}
        self.init = [Container(c, True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, False) for c in spec.get("containers") or []]
        for c in self.init + (self.containers if self.init else []):
            c.state = {"waiting": {"reason": "PodInitializing"}}
        self.initialized = not self.init
        self.mounts_ready = False
        self.terminating = False
        self.task: asyncio.Task[None] | None = None
        self.start_time = _now()
        self.waiting_events: set[str] = set()

    # ---- status ----

    def phase(self) -> str:
        policy = (self.pod.get("spec") or {}).get("restartPolicy", "Always")
        if any("terminated" in c.state and c.state["terminated"]["exitCode"] != 0 for c in self.init) and policy == "Never":
            return "Failed"
        if not self.initialized:
            return "Pending"
        states = [c.state for c in self.containers]
        if any("running" in s for s in states):
            return "Running"
        if all("terminated" in s for s in states) and policy != "Always":
            return "Succeeded" if all(s["terminated"]["exitCode"] == 0 for s in states) else "Failed"
        if any(c.restart_count or "terminated" in c.last_state for c in self.containers):
            return "Running"  # restarting (waiting in CrashLoopBackOff)
        return "Pending"

    def status(self, old: dict[str, Any]) -> dict[str, Any]:
        spec = self.pod.get("spec") or {}
        containers_ready = all(c.ready for c in self.containers)
        gates = [g.get("conditionType") for g in spec.get("readinessGates") or []]
        old_conditions = {c.get("type"): c for c in old.get("conditions") or []}
        ready = containers_ready and all((old_conditions.get(g) or {}).get("status") == "True" for g in gates)
        phase = self.phase()
        if phase in ("Succeeded", "Failed"):
            ready = containers_ready = False

        def cond(type_: str, value: bool, reason: str = "", message: str = "") -> dict[str, Any]:
            status = "True" if value else "False"
            prev = old_conditions.get(type_) or {}
            c = {"type": type_, "status": status, "lastProbeTime": None,
                 "lastTransitionTime": prev.get("lastTransitionTime") if prev.get("status") == status else _now()}
            if not value and reason:
                c["reason"], c["message"] = reason, message
            return c

        unready = f"containers with unready status: [{' '.join(c.name for c in self.containers if not c.ready)}]"
        not_ready = ("PodCompleted", "") if phase == "Succeeded" else ("ContainersNotReady", unready)
        incomplete = [c.name for c in self.init if (c.state.get("terminated") or {}).get("exitCode", 1) != 0]
        conditions = [cond("PodReadyToStartContainers", self.mounts_ready),
                      cond("Initialized", self.initialized, "ContainersNotInitialized",
                           f"containers with incomplete status: [{' '.join(incomplete)}]"),
                      cond("Ready", ready, *not_ready),
                      cond("ContainersReady", containers_ready, *not_ready),
                      cond("PodScheduled", True)]
        conditions += [c for t, c in old_conditions.items() if t not in {x["type"] for x in conditions}]
        images = {c["name"]: c.get("image", "") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])}
        status: dict[str, Any] = {
            "phase": phase, "conditions": conditions, "hostIP": self.k.host_ip, "hostIPs": [{"ip": self.k.host_ip}],
            "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": self.start_time,
            "containerStatuses": [c.status(images[c.name]) for c in self.containers], "qosClass": _qos(spec)}
        if self.init:
            status["initContainerStatuses"] = [c.status(images[c.name]) for c in self.init]
        return status

    def write_status(self) -> None:
        self.k.write_status(self)

    # ---- the pod's life ----

    async def run(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.write_status()
            volumes = await self._volumes()
            self.mounts_ready = True
            self.write_status()
            for c in self.init:
                while not await self._run_init(c, volumes):
                    pass
            self.initialized = True
            self.write_status()
            await asyncio.gather(*(self._keep_running(c, volumes) for c in self.containers))
        except asyncio.CancelledError:
            raise
        except _Stop:
            return
        except Exception as exc:  # noqa: BLE001 - a kubelet bug: shown on the pod and on stderr, not lost in a task
            import traceback
            traceback.print_exc()
            self.k.event(self.pod, "Warning", "FailedSync", f"the cluster box's kubelet failed: {type(exc).__name__}: {exc}")

    async def _volumes(self) -> dict[str, Path]:
        """Each volume's folder; waits (with events) while a Secret, ConfigMap or PVC is missing."""
        while True:
            try:
                return self.k.mount_volumes(self)
            except PodError as exc:
                if exc.message not in self.waiting_events:
                    self.waiting_events.add(exc.message)
                    self.k.event(self.pod, "Warning", exc.reason, exc.message)
                await self.k.wake.wait_for_change(1.0)

    async def _image(self, c: Container) -> Image:
        """The container's image, or ErrImagePull then ImagePullBackOff (with back-off) forever."""
        name = c.spec.get("image", "")
        attempts = 0
        while True:
            image = _image_for(self.k.images, name)
            if image is not None:
                return image
            msg = (f'Failed to pull image "{name}": the cluster box knows no image of that name '
                   f"(known: {', '.join(sorted(self.k.images))})")
            c.state = {"waiting": {"reason": "ErrImagePull", "message": msg}}
            self.write_status()
            self.k.event(self.pod, "Warning", "Failed", msg, c.name)
            await asyncio.sleep(min(self.k.backoff_base, 1.0))  # the next sync finds the pull backing off
            c.state = {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{name}"'}}
            self.write_status()
            self.k.event(self.pod, "Normal", "BackOff", f'Back-off pulling image "{name}"', c.name)
            await asyncio.sleep(self.k.backoff(attempts))
            attempts += 1

    async def _run_init(self, c: Container, volumes: dict[str, Path]) -> bool:
        """Runs an init container to its end; True once it succeeded, False to run it again
        (_Stop when the pod never restarts: it has failed)."""
        policy = (self.pod.get("spec") or {}).get("restartPolicy", "Always")
        code = await self._start_and_wait(c, volumes)
        if code == 0:
            return True
        if policy == "Never":
            raise _Stop()
        await self._back_off(c)
        return False

    async def _keep_running(self, c: Container, volumes: dict[str, Path]) -> None:
        policy = (self.pod.get("spec") or {}).get("restartPolicy", "Always")
        while True:
            code = await self._start_and_wait(c, volumes, probes=True)
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self.write_status()
                return
            await self._back_off(c)

    async def _back_off(self, c: Container) -> None:
        """As the kubelet's back-off: the first restart is immediate, then each waits base, 2 x base,
        4 x base ... (capped) in CrashLoopBackOff; a container that ran long enough starts over."""
        running = c.last_state.get("terminated") or {}
        if running.get("startedAt") and running.get("finishedAt") and \
                _seconds(running["finishedAt"]) - _seconds(running["startedAt"]) > 60 * self.k.backoff_base:
            c.backoff = 0
        n, c.backoff = c.backoff, c.backoff + 1
        if n == 0:
            return
        delay = self.k.backoff(n - 1)
        c.state = {"waiting": {"reason": "CrashLoopBackOff",
                               "message": f"back-off {_duration(delay)} restarting failed container={c.name} pod={self.name}_{self.namespace}({self.uid})"}}
        self.write_status()
        self.k.event(self.pod, "Warning", "BackOff", "Back-off restarting failed container", c.name)
        await asyncio.sleep(delay)

    async def _start_and_wait(self, c: Container, volumes: dict[str, Path], probes: bool = False) -> int:
        if self.terminating:
            raise _Stop()
        image = await self._image(c)
        try:
            argv, env, cwd, mounts = self.k.container_process(self, c, image, volumes)
        except PodError as exc:
            c.state = {"waiting": {"reason": exc.reason, "message": exc.message}}
            self.write_status()
            if exc.message not in self.waiting_events:
                self.waiting_events.add(exc.message)
                self.k.event(self.pod, "Warning", "Failed", exc.message, c.name)
            await self.k.wake.wait_for_change(1.0)
            return await self._start_and_wait(c, volumes, probes)
        logs = self.dir / "logs" / c.name
        logs.mkdir(parents=True, exist_ok=True)
        if c.log is not None:  # a restart: restartCount counts the containers started after the first
            c.previous_log = c.log
            c.restart_count += 1
        c.log = logs / f"{c.restart_count}.log"
        term = Path(mounts[c.spec.get("terminationMessagePath") or "/dev/termination-log"])
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_bytes(b"")
        self.k.event(self.pod, "Normal", "Pulled", f'Container image "{c.spec.get("image", "")}" already present on machine', c.name)
        self.k.event(self.pod, "Normal", "Created", f"Created container {c.name}", c.name)
        started_at = _now()
        try:
            with open(c.log, "wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as exc:
            # The runtime could not start it (not executable...): a terminated container, code 128.
            c.container_id = f"box://{self.uid}/{c.name}/{c.restart_count}"
            return self._terminated(c, 128, "StartError", f"failed to start: {exc}", started_at, term)
        c.proc = proc
        c.container_id = f"box://{proc.pid}"
        c.state = {"running": {"startedAt": started_at}}
        c.started = not probes or "startupProbe" not in c.spec
        c.ready = False
        self.k.event(self.pod, "Normal", "Started", f"Started container {c.name}", c.name)
        if probes and "readinessProbe" not in c.spec:
            c.ready = c.started
        self.write_status()
        prober = asyncio.get_running_loop().create_task(self._probe(c, proc)) if probes else None
        try:
            code = await proc.wait()
        finally:
            if prober is not None:
                prober.cancel()
                await asyncio.wait([prober])  # (awaiting it directly would swallow our own cancellation)
        c.proc = None
        # A container ends with its main process: what it left running in its group goes too (as
        # the processes of a PID namespace die with its first one).
        _kill_tree(proc.pid, signal.SIGKILL, [])
        return self._terminated(c, _exit_code(code), "Error" if code else "Completed", None, started_at, term)

    def _terminated(self, c: Container, code: int, reason: str, message: str | None, started_at: str, term: Path) -> int:
        text = ""
        with contextlib.suppress(OSError):
            text = term.read_bytes()[:MAX_MESSAGE].decode("utf-8", "replace")
        if not text and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError" and c.log:
            with contextlib.suppress(OSError):
                lines = c.log.read_bytes()[-2048:].decode("utf-8", "replace").splitlines(keepends=True)[-80:]
                text = "".join(lines)
        terminated: dict[str, Any] = {"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": _now(),
                                      "containerID": c.container_id}
        if text or message:
            terminated["message"] = text or message
        c.state = {"terminated": terminated}
        c.ready = False
        final = c.init and code == 0 or not self._restarts(c, code)
        if not final:
            c.last_state = {"terminated": terminated}
        self.write_status()
        return code

    def _restarts(self, c: Container, code: int) -> bool:
        policy = (self.pod.get("spec") or {}).get("restartPolicy", "Always")
        if self.terminating:
            return False
        return policy == "Always" or (policy == "OnFailure" and code != 0) or (c.init and policy != "Never" and code != 0)

    # ---- probes ----

    async def _probe(self, c: Container, proc: asyncio.subprocess.Process) -> None:
        spec = c.spec
        t0 = time.monotonic()
        startup = spec.get("startupProbe")
        if startup:
            ok = await self._until(c, startup, t0)
            if not ok:
                await self._kill_for(c, proc, "Startup", startup)
                return
            c.started = True
            if "readinessProbe" not in spec:
                c.ready = True
            self.write_status()
        tasks = []
        if spec.get("livenessProbe"):
            tasks.append(self._liveness(c, proc, spec["livenessProbe"], t0))
        if spec.get("readinessProbe"):
            tasks.append(self._readiness(c, spec["readinessProbe"], t0))
        if tasks:
            await asyncio.gather(*tasks)

    async def _until(self, c: Container, probe: dict[str, Any], t0: float) -> bool:
        """The startup probe: True at its first success, False after failureThreshold failures."""
        period, fail_n = _probe_numbers(probe)
        await asyncio.sleep(max(0.0, t0 + float(probe.get("initialDelaySeconds", 0)) - time.monotonic()))
        failures = 0
        while True:
            ok, why = await self.k.probe(self, c, probe)
            if ok:
                return True
            failures += 1
            self.k.event(self.pod, "Warning", "Unhealthy", f"Startup probe failed: {why}", c.name)
            if failures >= fail_n:
                return False
            await asyncio.sleep(period)

    async def _liveness(self, c: Container, proc: asyncio.subprocess.Process, probe: dict[str, Any], t0: float) -> None:
        period, fail_n = _probe_numbers(probe)
        await asyncio.sleep(max(0.0, t0 + float(probe.get("initialDelaySeconds", 0)) - time.monotonic()))
        failures = 0
        while True:
            ok, why = await self.k.probe(self, c, probe)
            failures = 0 if ok else failures + 1
            if not ok:
                self.k.event(self.pod, "Warning", "Unhealthy", f"Liveness probe failed: {why}", c.name)
            if failures >= fail_n:
                await self._kill_for(c, proc, "Liveness", probe)
                return
            await asyncio.sleep(period)

    async def _readiness(self, c: Container, probe: dict[str, Any], t0: float) -> None:
        period, fail_n = _probe_numbers(probe)
        ok_n = max(1, int(probe.get("successThreshold", 1)))
        await asyncio.sleep(max(0.0, t0 + float(probe.get("initialDelaySeconds", 0)) - time.monotonic()))
        successes = failures = 0
        while True:
            ok, why = await self.k.probe(self, c, probe)
            if ok:
                successes, failures = successes + 1, 0
                if successes >= ok_n and not c.ready:
                    c.ready = True
                    self.write_status()
            else:
                successes, failures = 0, failures + 1
                self.k.event(self.pod, "Warning", "Unhealthy", f"Readiness probe failed: {why}", c.name)
                if failures >= fail_n and c.ready:
                    c.ready = False
                    self.write_status()
            await asyncio.sleep(period)

    async def _kill_for(self, c: Container, proc: asyncio.subprocess.Process, kind: str, probe: dict[str, Any]) -> None:
        msg = f"Container {c.name} failed {kind.lower()} probe, will be restarted"
        self.k.event(self.pod, "Normal", "Killing", msg, c.name)
        grace = probe.get("terminationGracePeriodSeconds", (self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        await self.k.stop_process(proc, float(grace))

    # ---- deletion ----

    async def terminate(self, grace: float) -> None:
        """Graceful stop: the pod's task ends (no restart, no probe), then SIGTERM to every running
        container's process tree and SIGKILL after the grace period."""
        self.terminating = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])
        live = [c for c in self.init + self.containers if c.proc is not None]
        for c in live:
            self.k.event(self.pod, "Normal", "Killing", f"Stopping container {c.name}", c.name)
        await asyncio.gather(*(self.k.stop_process(c.proc, grace) for c in live if c.proc is not None))
        for c in self.init + self.containers:
            c.ready = False
            if c.proc is not None:
                code = _exit_code(c.proc.returncode or 0)
                c.state = {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed",
                                          "startedAt": (c.state.get("running") or {}).get("startedAt"), "finishedAt": _now(),
                                          "containerID": c.container_id}}
                c.proc = None

    def kill_now(self) -> None:
        for c in self.init + self.containers:
            if c.proc is not None and c.proc.returncode is None:
                _kill_tree(c.proc.pid, signal.SIGKILL, _descendants(c.proc.pid))


class _Stop(Exception):
    """The pod is done (terminating, or failed for good)."""


def mount_namespaces_available() -> bool:
    """Whether containers can get a real mount namespace (root, util-linux's unshare, overlayfs): then every
    program in the pod, native code included (safetensors, tokenizers, torch), sees the volumes at their
    mountPaths. Else the pod's Python redirects its own file calls (podsite/sitecustomize.py). Off with
    CLUSTERBOX_MOUNT_NAMESPACES=0."""
    global _NAMESPACES
    if _NAMESPACES is None:
        _NAMESPACES = False
        if os.environ.get("CLUSTERBOX_MOUNT_NAMESPACES", "1") != "0" and os.geteuid() == 0 and shutil.which("unshare"):
            import subprocess
            import tempfile
            with tempfile.TemporaryDirectory(prefix="clusterbox-ns-") as tmp:
                for d in ("u", "w", "m"):
                    os.mkdir(os.path.join(tmp, d))
                probe = (f"mount -t overlay overlay -o lowerdir={tmp}/m,upperdir={tmp}/u,workdir={tmp}/w {tmp}/m "
                         f"&& mount --bind {tmp}/u {tmp}/m")
                try:
                    _NAMESPACES = subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", probe],
                                                 capture_output=True, timeout=10).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    _NAMESPACES = False
    return _NAMESPACES


_NAMESPACES: bool | None = None


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def namespace_setup(mounts: Mapping[str, str], scratch: Path, hidden: str) -> tuple[list[str], dict[str, str]]:
    """The shell lines that build a container's mount namespace, and the mounts left to the Python redirect.

    Each volume folder is bind-mounted at its mountPath. A mountPath that does not exist on the machine is made
    inside a private overlay of its deepest existing ancestor (its upper layer in `scratch`), so nothing is ever
    created on the machine itself. Mounts that would hide `hidden` (the kubelet's own folder, e.g. /tmp) go last;
    files on special filesystems (/dev/termination-log) and anything below the root are left to the redirect."""
    lines, leftover, overlaid = ["set -e"], {}, set()
    order = sorted(mounts.items(), key=lambda m: (hidden == m[0] or hidden.startswith(m[0] + "/"), m[0].count("/"), m[0]))
    for n, (target, source) in enumerate(order):
        if target in ("/", "/dev", "/proc", "/sys") or target.startswith(("/dev/", "/proc/", "/sys/")):
            leftover[target] = source
            continue
        is_file = os.path.isfile(source)
        ancestor = target
        while not os.path.lexists(ancestor) and ancestor != "/":
            ancestor = os.path.dirname(ancestor)
        below_mount = any(target != t and target.startswith(t + "/") for t, _ in order[:n])
        if ancestor != target and not below_mount:
            if ancestor == "/":
                leftover[target] = source
                continue
            top = next((a for a in overlaid if ancestor == a or ancestor.startswith(a + "/")), None)
            if top is None:
                up, work = scratch / f"upper{n}", scratch / f"work{n}"
                up.mkdir(parents=True, exist_ok=True)
                work.mkdir(parents=True, exist_ok=True)
                lines.append(f"mount -t overlay overlay -o lowerdir={_quote(ancestor)},upperdir={_quote(str(up))},"
                             f"workdir={_quote(str(work))} {_quote(ancestor)}")
                overlaid.add(ancestor)
        if ancestor != target:
            parent = os.path.dirname(target) if is_file else target
            lines.append(f"mkdir -p {_quote(parent)}")
            if is_file:
                lines.append(f": > {_quote(target)}")
        lines.append(f"mount --bind {_quote(source)} {_quote(target)}")
    return lines, leftover


def _die_with_parent() -> None:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed with the box's thread


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


def _seconds(stamp: str) -> float:
    import datetime
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _duration(seconds: float) -> str:
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60)}s"
    return f"{seconds:g}s" if seconds >= 1 else f"{int(seconds * 1000)}ms"


def _probe_numbers(probe: dict[str, Any]) -> tuple[float, int]:
    return float(probe.get("periodSeconds", 10)), max(1, int(probe.get("failureThreshold", 3)))


def _qos(spec: dict[str, Any]) -> str:
    resources = [(c.get("resources") or {}) for c in spec.get("containers") or []]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all((r.get("limits") or {}).get(k) and (r.get("requests") or r.get("limits") or {}).get(k) == r["limits"][k]
                     for r in resources for k in ("cpu", "memory"))
    return "Guaranteed" if guaranteed else "Burstable"


class _Wake:
    """Wakes tasks waiting for any change in the store (a Secret, ConfigMap or PVC appearing)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for_change(self, ceiling: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._event.wait(), ceiling)


class Kubelet:
    """Runs on the box's event loop; touches the store directly (as the node's identity would)."""

    def __init__(self, server: ApiServer, root: Path, node_name: str, images: Mapping[str, Image | Path | str] | None,
                 token_for: Callable[[str, str], str], ca_path: Path, api_host: str, api_port: int,
                 backoff_base: float = 10.0, backoff_cap: float = 300.0, pod_subnet: str | None = None):
        self.s = server
        self.root = root
        self.node_name = node_name
        self.images = {k: v if isinstance(v, Image) else Image(Path(v)) for k, v in (images if images is not None else default_images()).items()}
        self.token_for = token_for
        self.ca_path = ca_path
        self.host_ip, self.api_port = api_host, api_port
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        if pod_subnet is None:  # a random 127.a.b.0/24: boxes running side by side never share an address
            pod_subnet = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.0/24"
        self.free_ips = [str(ip) for ip in list(ipaddress.ip_network(pod_subnet).hosts())[1:]]
        self.pods: dict[str, PodRunner] = {}  # uid -> runner
        self.wake = _Wake()
        self._events: dict[tuple[Any, ...], str] = {}
        self._probes: set[asyncio.subprocess.Process] = set()  # exec probes running now
        self._finishing: set[asyncio.Task[None]] = set()  # pods being stopped after a delete
        self._task: asyncio.Task[None] | None = None
        self._session: Any = None
        self._res = server.by_plural("", "pods")

    def backoff(self, n: int) -> float:
        return float(min(self.backoff_cap, self.backoff_base * (2 ** n)))

    # ---- the loop ----

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        # Pods, and what a pod waiting to start may be waiting for: one queue for all of them.
        queue: asyncio.Queue[Any] = asyncio.Queue()
        watchers = []
        for plural in ("pods", "secrets", "configmaps", "persistentvolumeclaims", "serviceaccounts"):
            w = Watcher(self.s.by_plural("", plural), None, lambda o: True)
            w.queue = queue
            watchers.append(w)
            self.s.watchers.add(w)
        try:
            for obj in list(self.s.objects[self._res.key].values()):
                self._sync(obj, False)
            while True:
                ev = await queue.get()
                if ev is None:
                    continue  # a dropped watch stream is a fault for API clients; the kubelet reads the store itself
                self.wake.set()
                if ev.key == self._res.key:
                    self._sync(ev.obj, ev.type == "DELETED")
        finally:
            for w in watchers:
                self.s.watchers.discard(w)

    def _sync(self, obj: dict[str, Any], deleted: bool) -> None:
        meta = obj["metadata"]
        if (obj.get("spec") or {}).get("nodeName") != self.node_name:
            return
        runner = self.pods.get(meta["uid"])
        if deleted or meta.get("deletionTimestamp"):
            if runner is not None and not runner.terminating:
                grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                runner.terminating = True
                task = asyncio.get_running_loop().create_task(self._finish(runner, grace, deleted))
                self._finishing.add(task)
                task.add_done_callback(self._finishing.discard)
            elif runner is None and not deleted:
                self._remove(obj)
            return
        if runner is not None:
            runner.pod = copy.deepcopy(obj)
            return
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return  # done before this kubelet started: not run again
        if not self.free_ips:
            return
        runner = PodRunner(self, copy.deepcopy(obj), self.free_ips.pop(0))
        self.pods[meta["uid"]] = runner
        runner.task = asyncio.get_running_loop().create_task(runner.run())

    async def _finish(self, runner: PodRunner, grace: float, deleted: bool) -> None:
        await runner.terminate(grace)
        self.pods.pop(runner.uid, None)
        if not deleted:
            current = self.s.get(self._res, runner.namespace, runner.name)
            if current is not None and current["metadata"]["uid"] == runner.uid:
                self.write_status(runner)
                current = self.s.get(self._res, runner.namespace, runner.name)
                self._remove(current)
        self.free_ips.append(runner.ip)
        for key in [k for k in self._events if k[0] == runner.uid]:
            del self._events[key]
        shutil.rmtree(runner.dir, ignore_errors=True)

    def graceful_delete(self, obj: dict[str, Any], grace: int | None) -> dict[str, Any] | None:
        """The API side of deleting a running pod of this node: the pod strategy's graceful delete
        (deletionTimestamp = now + grace, deletionGracePeriodSeconds) leaves the pod to the kubelet,
        which stops its containers and then deletes it for good. None: delete it now (not bound
        here, already finished, or a grace period of 0, as `kubectl delete --force --grace-period=0`)."""
        meta, spec = obj["metadata"], obj.get("spec") or {}
        if spec.get("nodeName") != self.node_name or (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return None
        if grace is None:
            grace = int(spec.get("terminationGracePeriodSeconds", 30))
        if grace <= 0:
            return None
        if meta.get("deletionTimestamp"):
            return obj
        import datetime
        new = copy.deepcopy(obj)
        when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=grace)
        new["metadata"]["deletionTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        return self._store(obj, new)

    def _store(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """A write of the delete path, which (as in the real server) does not go through update."""
        meta = new["metadata"]
        self.s.objects[self._res.key][(meta["namespace"], meta["name"])] = new
        meta["resourceVersion"] = str(self.s._next_rv())
        self.s._emit(self._res, "MODIFIED", new, old)
        return new

    def _remove(self, obj: dict[str, Any]) -> None:
        """The kubelet's final delete (grace period 0): gone now, or once no finalizer holds it."""
        if not obj["metadata"].get("finalizers"):
            self.s._remove(self._res, obj)
        elif obj["metadata"].get("deletionGracePeriodSeconds"):
            new = copy.deepcopy(obj)
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            self._store(obj, new)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        procs = list(self._probes)
        for runner in list(self.pods.values()):
            runner.terminating = True
            runner.kill_now()
            procs += [c.proc for c in runner.init + runner.containers if c.proc is not None]
        for proc in self._probes:
            _kill_tree(proc.pid, signal.SIGKILL, _descendants(proc.pid))
        with contextlib.suppress(asyncio.TimeoutError):  # reaped here, not by a transport collected after the loop closed
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 10)
        tasks = [r.task for r in self.pods.values() if r.task is not None] + list(self._finishing)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        self.pods.clear()
        if self._session is not None:
            await self._session.close()

    async def stop_process(self, proc: asyncio.subprocess.Process, grace: float) -> None:
        if proc.returncode is not None:
            return
        tree = _descendants(proc.pid)
        _kill_tree(proc.pid, signal.SIGTERM, tree)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), max(grace, 0.0))
        _kill_tree(proc.pid, signal.SIGKILL, tree + _descendants(proc.pid) if proc.returncode is None else tree)
        await proc.wait()

    # ---- writes ----

    def write_status(self, runner: PodRunner) -> None:
        current = self.s.get(self._res, runner.namespace, runner.name)
        if current is None or current["metadata"]["uid"] != runner.uid:
            return
        new = copy.deepcopy(current)
        new["status"] = runner.status(current.get("status") or {})
        rq = Request(self._res, runner.namespace, runner.name, "status", "update", NODE_USER, "kubelet")
        try:
            self.s.admit(rq, current, new, "kubelet", False)
        except ApiError as exc:  # the box refusing its own kubelet is a bug worth seeing
            print(f"clusterbox kubelet: status of {runner.namespace}/{runner.name} refused: {exc.message}", flush=True)

    def event(self, pod: dict[str, Any], type_: str, reason: str, message: str, container: str | None = None) -> None:
        """An Event on the pod; a repeat of the same one bumps its count, as the kubelet's recorder does."""
        meta = pod["metadata"]
        res = self.s.by_plural("", "events")
        key = (meta["uid"], type_, reason, message, container)
        existing = self._events.get(key)
        old = self.s.get(res, meta["namespace"], existing) if existing else None
        if old is not None:
            new = copy.deepcopy(old)
            new["count"] = int(old.get("count", 1)) + 1
            new["lastTimestamp"] = _now()
            with contextlib.suppress(ApiError):
                self.s.admit(Request(res, meta["namespace"], existing, None, "update", NODE_USER, "kubelet"), old, new, "kubelet", False)
            return
        involved = {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"], "apiVersion": "v1"}
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        body = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": involved, "reason": reason, "message": message, "type": type_, "count": 1,
                "source": {"component": "kubelet", "host": self.node_name}, "reportingComponent": "kubelet",
                "reportingInstance": self.node_name, "firstTimestamp": _now(), "lastTimestamp": _now()}
        with contextlib.suppress(ApiError):  # e.g. the namespace is being deleted
            stored, _ = self.s.admit(Request(res, meta["namespace"], None, None, "create", NODE_USER, "kubelet"), None, body, "kubelet", False)
            self._events[key] = stored["metadata"]["name"]

    # ---- volumes ----

    def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.s.get(self.s.by_plural("", plural), namespace, name)

    def mount_volumes(self, runner: PodRunner) -> dict[str, Path]:
        spec = runner.pod.get("spec") or {}
        ns = runner.namespace
        out: dict[str, Path] = {}
        for vol in spec.get("volumes") or []:
            name = vol["name"]
            folder = runner.dir / "volumes" / name
            if "emptyDir" in vol:
                folder.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"].get("claimName", "")
                if self._get("persistentvolumeclaims", ns, claim) is None:
                    raise PodError("FailedMount", f'persistentvolumeclaim "{claim}" not found')
                folder = self.root / "claims" / ns / claim
                folder.mkdir(parents=True, exist_ok=True)
            elif "secret" in vol or "configMap" in vol:
                files = self._key_files(ns, vol.get("secret") or vol.get("configMap") or {}, "secret" in vol, name)
                self._write_files(folder, files, (vol.get("secret") or vol.get("configMap") or {}).get("defaultMode", 0o644))
            elif "projected" in vol:
                files = {}
                for source in vol["projected"].get("sources") or []:
                    files.update(self._projection(runner, source, name))
                self._write_files(folder, files, vol["projected"].get("defaultMode", 0o644))
            elif "downwardAPI" in vol:
                files = {item["path"]: (self._field(runner, item["fieldRef"]["fieldPath"]).encode(), item.get("mode"))
                         for item in vol["downwardAPI"].get("items") or [] if "fieldRef" in item}
                self._write_files(folder, files, vol["downwardAPI"].get("defaultMode", 0o644))
            else:
                kind = next((k for k in vol if k != "name"), "?")
                raise PodError("FailedMount", f'volume "{name}": the cluster box does not support {kind} volumes')
            out[name] = folder
        if self._automount(runner):
            folder = runner.dir / "volumes" / "kube-api-access"
            self._write_files(folder, self._sa_files(runner), 0o644)
            out["kube-api-access"] = folder
        return out

    def _automount(self, runner: PodRunner) -> bool:
        spec = runner.pod.get("spec") or {}
        if "automountServiceAccountToken" in spec:
            return bool(spec["automountServiceAccountToken"])
        sa = self._get("serviceaccounts", runner.namespace, spec.get("serviceAccountName") or "default")
        return (sa or {}).get("automountServiceAccountToken", True) is not False

    def _sa_files(self, runner: PodRunner) -> dict[str, tuple[bytes, int | None]]:
        sa = (runner.pod.get("spec") or {}).get("serviceAccountName") or "default"
        if not hasattr(runner, "token"):
            runner.token = self.token_for(runner.namespace, sa)  # type: ignore[attr-defined]
        return {"token": (runner.token.encode(), None), "ca.crt": (self.ca_path.read_bytes(), None),  # type: ignore[attr-defined]
                "namespace": (runner.namespace.encode(), None)}

    def _key_files(self, ns: str, source: dict[str, Any], secret: bool, volume: str) -> dict[str, tuple[bytes, int | None]]:
        name = source.get("secretName" if secret and "secretName" in source else "name", "")
        obj = self._get("secrets" if secret else "configmaps", ns, name)
        kind = "secret" if secret else "configmap"
        if obj is None:
            if source.get("optional"):
                return {}
            raise PodError("FailedMount", f'MountVolume.SetUp failed for volume "{volume}" : {kind} "{name}" not found')
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()} if secret else \
            {**{k: v.encode() for k, v in (obj.get("data") or {}).items()},
             **{k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}}
        if secret:
            data.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
        items = source.get("items")
        if not items:
            return {k: (v, None) for k, v in data.items()}
        out = {}
        for item in items:
            if item["key"] not in data:
                if source.get("optional"):
                    continue
                raise PodError("FailedMount", f'MountVolume.SetUp failed for volume "{volume}" : {kind} "{name}" has no key "{item["key"]}"')
            out[item["path"]] = (data[item["key"]], item.get("mode"))
        return out

    def _projection(self, runner: PodRunner, source: dict[str, Any], volume: str) -> dict[str, tuple[bytes, int | None]]:
        if "serviceAccountToken" in source:
            files = self._sa_files(runner)
            return {source["serviceAccountToken"].get("path", "token"): files["token"]}
        if "secret" in source:
            return self._key_files(runner.namespace, {**source["secret"], "secretName": source["secret"].get("name", "")}, True, volume)
        if "configMap" in source:
            return self._key_files(runner.namespace, source["configMap"], False, volume)
        if "downwardAPI" in source:
            return {item["path"]: (self._field(runner, item["fieldRef"]["fieldPath"]).encode(), item.get("mode"))
                    for item in source["downwardAPI"].get("items") or [] if "fieldRef" in item}
        return {}

    @staticmethod
    def _write_files(folder: Path, files: Mapping[str, tuple[bytes, int | None]], mode: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for rel, (data, item_mode) in files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            path.chmod(item_mode if item_mode is not None else mode)

    # ---- processes ----

    def _field(self, runner: PodRunner, path: str) -> str:
        pod = runner.pod
        meta, spec = pod["metadata"], pod.get("spec") or {}
        simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
                  "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
                  "status.podIP": runner.ip, "status.podIPs": runner.ip, "status.hostIP": self.host_ip,
                  "status.hostIPs": self.host_ip}
        if path in simple:
            return simple[path]
        for field in ("labels", "annotations"):
            if path.startswith(f"metadata.{field}['") and path.endswith("']"):
                return (meta.get(field) or {}).get(path[len(f"metadata.{field}['"):-2], "")
            if path == f"metadata.{field}":
                return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(field) or {}).items()))
        raise PodError("CreateContainerConfigError", f"unsupported fieldRef fieldPath {path!r}")

    def _env(self, runner: PodRunner, c: dict[str, Any]) -> dict[str, str]:
        ns = runner.namespace
        env: dict[str, str] = {}
        for source in c.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, plural in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
                if kind not in source:
                    continue
                ref = source[kind]
                obj = self._get(plural, ns, ref.get("name", ""))
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise PodError("CreateContainerConfigError", f'{plural[:-1]} "{ref.get("name")}" not found')
                data = obj.get("data") or {}
                for k, v in data.items():
                    env[prefix + k] = base64.b64decode(v).decode() if plural == "secrets" else v
        for var in c.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand(str(var.get("value", "")), env)
                continue
            vf = var["valueFrom"]
            if "fieldRef" in vf:
                env[name] = self._field(runner, vf["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                secret = "secretKeyRef" in vf
                ref = vf["secretKeyRef" if secret else "configMapKeyRef"]
                plural = "secrets" if secret else "configmaps"
                obj = self._get(plural, ns, ref.get("name", ""))
                data = (obj or {}).get("data") or {}
                if obj is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        continue
                    what = f'{plural[:-1]} "{ref.get("name")}" not found' if obj is None else \
                        f'couldn\'t find key {ref.get("key")} in {"Secret" if secret else "ConfigMap"} {ns}/{ref.get("name")}'
                    raise PodError("CreateContainerConfigError", what)
                value = data[ref["key"]]
                env[name] = base64.b64decode(value).decode() if secret else value
            elif "resourceFieldRef" in vf:
                env[name] = _resource_field(c, vf["resourceFieldRef"])
        return env

    def container_process(self, runner: PodRunner, c: Container, image: Image,
                          volumes: dict[str, Path]) -> tuple[list[str], dict[str, str], str, dict[str, str]]:
        """argv, environment, working folder and mountPath -> folder for one container start."""
        spec = c.spec
        own = runner.dir / "containers" / c.name
        own.mkdir(parents=True, exist_ok=True)
        mounts: dict[str, str] = {}
        for m in spec.get("volumeMounts") or []:
            if m["name"] not in volumes:
                raise PodError("CreateContainerConfigError", f'volume "{m["name"]}" not found in the pod\'s volumes')
            folder = volumes[m["name"]] / m["subPath"] if m.get("subPath") else volumes[m["name"]]
            mounts[m["mountPath"].rstrip("/") or "/"] = str(folder)
        if "kube-api-access" in volumes and SA_DIR not in mounts:
            mounts[SA_DIR] = str(volumes["kube-api-access"])
        mounts[spec.get("terminationMessagePath") or "/dev/termination-log"] = str(own / "termination-log")
        user_env = self._env(runner, spec)
        path = os.pathsep.join([str(image.bin), "/usr/local/bin", "/usr/bin", "/bin"])
        env = {"PATH": path, "HOSTNAME": runner.name, "HOME": str(own), "LANG": "C.UTF-8",
               "KUBERNETES_SERVICE_HOST": self.host_ip, "KUBERNETES_SERVICE_PORT": str(self.api_port),
               "KUBERNETES_SERVICE_PORT_HTTPS": str(self.api_port), **user_env}
        env["PYTHONPATH"] = os.pathsep.join([str(PODSITE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        setup: list[str] = []
        redirected: Mapping[str, str] = mounts
        if mount_namespaces_available():
            setup, redirected = namespace_setup(mounts, own / f"ns{os.getpid()}", str(self.root))
        env.update({"CLUSTERBOX_POD_IP": runner.ip, "CLUSTERBOX_API": f"{self.host_ip}:{self.api_port}",
                    "CLUSTERBOX_MOUNTS": json.dumps(sorted(redirected.items())), "CLUSTERBOX_KUBELET_ROOT": str(self.root)})
        command = [expand(str(a), user_env) for a in spec.get("command") or image.entrypoint]
        args = [expand(str(a), user_env) for a in (spec.get("args") if "args" in spec else ([] if spec.get("command") else image.cmd)) or []]
        argv = command + args
        if not argv:
            raise PodError("CreateContainerError", "no command specified")
        program = shutil.which(argv[0], path=path) if "/" not in argv[0] else argv[0]
        if program is None:
            raise PodError("RunContainerError", f'exec: "{argv[0]}": executable file not found in $PATH')
        workdir = spec.get("workingDir") or image.workdir
        cwd = str(own)
        if setup:
            # A real mount namespace: unshare(1) runs the mounts, then the container's program in its working folder.
            if workdir:
                setup.append(f"cd {_quote(workdir)}")
            setup.append('exec "$@"')
            return ([shutil.which("unshare") or "unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", "\n".join(setup), argv[0], program,
                     *argv[1:]], env, cwd, mounts)
        if workdir:
            for mount, folder in sorted(mounts.items(), key=lambda m: -len(m[0])):
                if workdir == mount or workdir.startswith(mount + "/"):
                    cwd = folder + workdir[len(mount):]
                    break
        Path(cwd).mkdir(parents=True, exist_ok=True)
        return [program, *argv[1:]], env, cwd, mounts

    # ---- probes ----

    async def probe(self, runner: PodRunner, c: Container, probe: dict[str, Any]) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                return await asyncio.wait_for(self._http_probe(runner, c, probe["httpGet"], timeout), timeout + 1)
            if "tcpSocket" in probe:
                port = _port(c.spec, probe["tcpSocket"].get("port"))
                host = probe["tcpSocket"].get("host") or runner.ip
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                writer.close()
                return True, ""
            if "exec" in probe:
                return await self._exec_probe(runner, c, probe["exec"].get("command") or [], timeout)
        except (OSError, asyncio.TimeoutError, PodError) as exc:
            return False, str(exc) or type(exc).__name__
        return False, "the cluster box supports httpGet, tcpSocket and exec probes"

    async def _http_probe(self, runner: PodRunner, c: Container, get: dict[str, Any], timeout: float) -> tuple[bool, str]:
        import aiohttp
        if self._session is None:
            self._session = aiohttp.ClientSession()
        port = _port(c.spec, get.get("port"))
        scheme = (get.get("scheme") or "HTTP").lower()
        url = f"{scheme}://{get.get('host') or runner.ip}:{port}{get.get('path') or '/'}"
        headers = {"User-Agent": "kube-probe/1.32", **{h["name"]: h["value"] for h in get.get("httpHeaders") or []}}
        try:
            async with self._session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout), ssl=False,
                                         allow_redirects=False) as r:
                await r.read()
                if 200 <= r.status < 400:
                    return True, ""
                return False, f"HTTP probe failed with statuscode: {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return False, f'Get "{url}": {exc or type(exc).__name__}'

    async def _exec_probe(self, runner: PodRunner, c: Container, command: list[str], timeout: float) -> tuple[bool, str]:
        image = _image_for(self.images, c.spec.get("image", ""))
        assert image is not None
        argv, env, cwd, _ = self.container_process(runner, c, image, self._volume_folders(runner))
        program = shutil.which(command[0], path=env["PATH"]) if command and "/" not in command[0] else (command or [""])[0]
        namespace = argv[:7] if argv[0].endswith("unshare") else []  # the container's mount namespace, built again
        proc = await asyncio.create_subprocess_exec(*namespace, *([command[0]] if namespace else []), program or command[0],
                                                    *command[1:], env=env, cwd=cwd,
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                                                    preexec_fn=_die_with_parent)
        self._probes.add(proc)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            _kill_tree(proc.pid, signal.SIGKILL, _descendants(proc.pid))
            await proc.wait()
            return False, f"command timed out after {timeout:g}s"
        finally:
            if proc.returncode is None:  # cancelled (the container stopped): the probe goes with it
                _kill_tree(proc.pid, signal.SIGKILL, _descendants(proc.pid))
                asyncio.get_running_loop().create_task(self._reap(proc))
            else:
                self._probes.discard(proc)
        return proc.returncode == 0, out.decode("utf-8", "replace")[-512:]

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self._probes.discard(proc)

    def _volume_folders(self, runner: PodRunner) -> dict[str, Path]:
        folders = {v["name"]: runner.dir / "volumes" / v["name"] for v in (runner.pod.get("spec") or {}).get("volumes") or []}
        for v in (runner.pod.get("spec") or {}).get("volumes") or []:
            if "persistentVolumeClaim" in v:
                folders[v["name"]] = self.root / "claims" / runner.namespace / v["persistentVolumeClaim"].get("claimName", "")
        if (runner.dir / "volumes" / "kube-api-access").exists():
            folders["kube-api-access"] = runner.dir / "volumes" / "kube-api-access"
        return folders

    # ---- logs ----

    def log_file(self, namespace: str, name: str, container: str | None, previous: bool) -> tuple[Path, Container]:
        """The log file behind GET pods/{name}/log, with the real server's 400s when there is none."""
        pod = self.s.get(self._res, namespace, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        runner = self.pods.get(pod["metadata"]["uid"])
        spec = pod.get("spec") or {}
        names = [c["name"] for c in spec.get("containers") or []]
        inits = [c["name"] for c in spec.get("initContainers") or []]
        if container is None:
            if len(names) != 1:
                raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
                               + (f" or one of the init containers: [{' '.join(inits)}]" if inits else ""))
            container = names[0]
        if container not in names + inits:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        c = next((x for x in runner.init + runner.containers if x.name == container), None) if runner else None
        path = None if c is None else (c.previous_log if previous else c.log)
        if c is None or path is None:
            if previous:
                raise ApiError(400, "BadRequest", f'previous terminated container "{container}" in pod "{name}" not found')
            reason = ((c.state if c else {}).get("waiting") or {}).get("reason", "ContainerCreating")
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        return path, c


def _port(container: dict[str, Any], port: Any) -> int:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise PodError("ProbeError", f"port {port!r} is not a named port of container {container.get('name')}")


def _resource_field(container: dict[str, Any], ref: dict[str, Any]) -> str:
    kind, _, res = ref.get("resource", "").partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(res)
    return str(value) if value is not None else "0"
