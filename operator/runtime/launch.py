"""Starting worker processes for the embedded runtime: forked from a per-model zygote, or spawned.

Both launchers hand back a :class:`WorkerHandle` (pid, wait, signals), so the supervisor does not
care which one made the process. Forking shares the loaded weights between allocations, and between
deployments of the same model: :class:`Zygotes` keeps one zygote per :class:`ZygoteKey` (what it
loads), for as long as a deployment uses it. Spawning a fresh interpreter per allocation is the
fallback where ``fork`` is unavailable or unwanted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...worker.modelstore import ModelInfo

log = logging.getLogger("infernetes.runtime")


def private_file(path: str, flags: int) -> int:
    """``open(..., opener=private_file)``: a log the server creates is readable by its user only (0600)."""
    return os.open(path, flags, 0o600)


class WorkerHandle:
    """A running worker process, whoever started it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _done(self, code: int) -> None:
        if not self.exited.done():
            self.exited.set_result(code)


class SpawnLauncher:
    """One fresh interpreter per allocation (``python -m infernetes.worker``)."""

    def __init__(self, python: str, cwd: Path) -> None:
        self.python = python
        self.cwd = cwd

    async def launch(self, args: list[str], fd: int, log_file: Path, env: dict[str, str] | None = None) -> WorkerHandle:
        with open(log_file, "ab", opener=private_file) as out:
            # -P: never put the working directory on sys.path (a folder named operator/ would shadow the stdlib).
            proc = await asyncio.create_subprocess_exec(
                self.python, "-P", "-m", "infernetes.worker", *args, "--fd", str(fd),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=(fd,),
                start_new_session=True, cwd=self.cwd, env={**os.environ, **(env or {})},
            )
        handle = WorkerHandle(proc.pid)

        async def reap() -> None:
            handle._done(await proc.wait())

        asyncio.create_task(reap())
        return handle

    async def close(self) -> None:
        return None


class ZygoteFailed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class ZygoteKey:
    """What a zygote loads: deployments whose models have equal keys fork their workers from one process.

    The folder alone is not enough: a model re-imported under the same id has new files in the same folder,
    and a deployment of it must not fork from a zygote that loaded the old ones. So the key holds a digest of
    the model's manifest (every file's checksum, the backend and its options), read when the deployment
    started. Everything else that shapes the engine is the server's (its Python, the worker device from its
    environment); per-allocation settings (threads, batch limits, credential, sockets, logs) go with each spawn.
    """

    model_dir: Path
    manifest_digest: str

    @classmethod
    def of(cls, model: ModelInfo) -> ZygoteKey:
        manifest = json.dumps(model.manifest(), sort_keys=True, default=str).encode()
        return cls(model.path.resolve(), hashlib.sha256(manifest).hexdigest())


class Zygote:
    """A process that loaded one model and forks workers from it on request."""

    def __init__(self, python: str, cwd: Path, model_dir: Path, log_file: Path, termination_log: Path,
                 model_id: str, key: ZygoteKey) -> None:
        self.python, self.cwd, self.model_dir, self.model_id = python, cwd, model_dir, model_id
        self.log_file, self.termination_log = log_file, termination_log
        self.key = key
        self.users: set[str] = set()  # the deployments forking from it (Zygotes closes it when none is left)
        self.proc: asyncio.subprocess.Process | None = None
        self.sock: socket.socket | None = None
        self.ready: asyncio.Future[None] | None = None
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.handles: dict[int, WorkerHandle] = {}
        self._ids = itertools.count()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.termination_log.unlink(missing_ok=True)
            with open(self.log_file, "ab", opener=private_file) as out:
                self.proc = await asyncio.create_subprocess_exec(
                    self.python, "-P", "-m", "infernetes.worker.zygote", "--model-dir", str(self.model_dir),
                    "--control-fd", str(child.fileno()), "--termination-log", str(self.termination_log),
                    "--model-id", self.model_id,
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=(child.fileno(),),
                    start_new_session=True, cwd=self.cwd,
                )
        except BaseException:  # a read-only or full data dir, no file descriptors left: keep none open
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent
        self.ready = asyncio.get_running_loop().create_future()
        # Launches wait on it through shield(); if they were all cancelled (a DELETE while the model loads), its
        # failure has no reader: mark it read, instead of "Future exception was never retrieved" in the log.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._reader = asyncio.create_task(self._read(parent, self.proc, self.ready))

    async def _read(self, sock: socket.socket, proc: asyncio.subprocess.Process, ready: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        buffer = b""
        try:
            while True:
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._handle(json.loads(line), ready)
        except (OSError, ValueError):
            pass
        code = await proc.wait()
        reason = self.termination_log.read_text().strip() if self.termination_log.exists() else ""
        failure = ZygoteFailed(code, reason or f"the model's zygote process exited with code {code}")
        if not ready.done():
            ready.set_exception(failure)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(failure)
        self.pending.clear()
        # Its workers notice their parent is gone and stop; report them as gone now.
        for handle in list(self.handles.values()):
            handle._done(-signal.SIGTERM)
        self.handles.clear()
        with contextlib.suppress(OSError):
            sock.close()

    def _handle(self, message: dict[str, Any], ready: asyncio.Future[None]) -> None:
        op = message.get("op")
        if op == "ready" and not ready.done():
            ready.set_result(None)
        elif op == "spawned":
            fut = self.pending.pop(message["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(message["pid"])
        elif op == "exited":
            handle = self.handles.pop(message["pid"], None)
            if handle is not None:
                handle._done(message["code"])

    async def launch(self, settings: dict[str, Any], fd: int, log_file: Path | None = None) -> WorkerHandle:
        """Fork a worker with these settings serving on ``fd``; its output goes to ``log_file`` (else the zygote's)."""
        async with self._lock:
            if self.proc is None or self.proc.returncode is not None:
                await self._start()
        assert self.ready is not None and self.sock is not None
        await asyncio.shield(self.ready)
        request_id = next(self._ids)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = fut
        message = {"op": "spawn", "id": request_id, "settings": settings,
                   **({"log": str(log_file)} if log_file is not None else {})}
        socket.send_fds(self.sock, [json.dumps(message).encode() + b"\n"], [fd])
        try:
            pid = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # Stopped while the fork was on its way (a DELETE during start-up): nobody will hold its handle, and a
            # zygote other deployments still use lives on, so stop that worker once its pid arrives.
            fut.add_done_callback(_terminate_spawned)
            raise
        handle = WorkerHandle(pid)
        self.handles[pid] = handle
        return handle

    async def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                # shutdown() is what tells the zygote to stop: uvloop keeps its own reference to a socket
                # it is reading, so close() alone never reaches the other end.
                self.sock.shutdown(socket.SHUT_RDWR)
                self.sock.close()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
        # The reader may never see the end of a socket closed under it: fail what still waits on this zygote (a
        # launch in flight as the last deployment left) instead of leaving it waiting for ever.
        closed = ZygoteFailed(0, "the model's zygote process was stopped")
        for fut in [self.ready, *self.pending.values()]:
            if fut is not None and not fut.done():
                fut.set_exception(closed)
        self.pending.clear()


def _terminate_spawned(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(fut.result(), signal.SIGTERM)


class Zygotes:
    """The runtime's zygotes, one per :class:`ZygoteKey`, each kept while a deployment uses it.

    Deployments of the same model fork from one process, so their workers share its weights copy-on-write.
    A zygote that dies is restarted by the next launch of any of its deployments (all of their workers die
    with it, and their supervisors restart them); one whose last deployment is released is closed.
    """

    def __init__(self, python: str, cwd: Path, logs: Path, run_dir: Path) -> None:
        self.python, self.cwd, self.logs, self.run_dir = python, cwd, logs, run_dir
        self.by_key: dict[ZygoteKey, Zygote] = {}

    def acquire(self, model: ModelInfo, deployment_id: str) -> Zygote:
        key = ZygoteKey.of(model)
        zygote = self.by_key.get(key)
        if zygote is None:
            name = f"zygote-{model.model_id}-{key.manifest_digest[:12]}"
            zygote = Zygote(self.python, self.cwd, model.path, self.logs / f"{name}.log",
                            self.run_dir / f"{name}.termination", model.model_id, key)
            self.by_key[key] = zygote
        zygote.users.add(deployment_id)
        return zygote

    async def release(self, zygote: Zygote, deployment_id: str) -> None:
        """``deployment_id`` stopped using ``zygote`` (its workers are already stopped); close it if it was the last."""
        zygote.users.discard(deployment_id)
        if zygote.users:
            return
        if self.by_key.get(zygote.key) is zygote:
            del self.by_key[zygote.key]
        await zygote.close()


def fork_supported() -> bool:
    return hasattr(os, "fork") and sys.platform.startswith("linux")
