"""Load a model once, then fork a worker per allocation: allocations share the read-only weights.

A zygote process imports torch and the model's library and loads the weights, without starting any
thread pool; each allocation is a ``fork()`` of it, so the weights and the imported code stay in
pages shared copy-on-write (measured: an extra allocation of all-MiniLM-L6-v2 costs ~12 MB private
memory instead of ~500 MB, and starts in well under a second instead of seconds).

The embedded runtime keeps one zygote per model (and version of its files), shared by every deployment
of it, so nothing a deployment chooses is loaded here: ``spawn`` messages carry each allocation's
settings (deployment, threads, batch limits, credential, sockets), its log file and its listening
socket (SCM_RIGHTS); the zygote answers ``spawned`` with the pid, and reports ``exited`` with the
exit code when a worker ends. A zygote whose model cannot load exits with code 3; a zygote whose
runtime disappears exits, and its workers follow.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import WorkerSettings, from_environment
from .server import EXIT_MODEL_FAILED, configure_threads

MODULE = "infernetes.worker.zygote"  # how the runtime starts it: in every zygote's and forked worker's command line


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _settings(base: dict[str, Any]) -> WorkerSettings:
    known = {f.name for f in fields(WorkerSettings)}
    values = {k: v for k, v in base.items() if k in known}
    # Settings the runtime does not pass come from the environment, as `infernetes worker` reads them.
    values.update(from_environment(set(values)))
    for key in ("model_dir", "termination_log", "ipc_path"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return WorkerSettings(**values)


def run_zygote(model_dir: Path, control_fd: int, termination_log: Path | None) -> int:
    configure_threads(1)  # no thread pool before fork(): children set their own thread counts
    control = socket.socket(fileno=control_fd)
    try:
        from .engine import engine_for
        from .modelstore import MANIFEST, ModelInfo

        info = ModelInfo.from_manifest(model_dir, json.loads((model_dir / MANIFEST).read_text()))
        engine = engine_for(info, 1)
        engine.load()
        from .app import freeze_heap

        freeze_heap()  # the workers forked from here inherit a heap the collector no longer walks
    except Exception as exc:  # the runtime reads the reason from the termination log
        reason = f"model [{model_dir.name}] failed to load: {type(exc).__name__}: {exc}"
        if termination_log is not None:
            termination_log.write_text(reason)
        print(f"infernetes-zygote: fatal: {reason}", file=sys.stderr, flush=True)
        return EXIT_MODEL_FAILED
    _send(control, {"op": "ready"})
    control.settimeout(0.5)
    children: set[int] = set()
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(control, 65536, 1)
        except TimeoutError:
            data, fds = None, []
        except OSError:
            data, fds = b"", []
        if data:
            try:
                _serve(engine, data, fds, control, children)
            except (BrokenPipeError, ConnectionResetError):  # it left while a worker was being forked for it
                data = b""
        if data == b"":  # the runtime is gone: stop, and let the workers notice their parent left
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            return 0
        try:
            _reap(children, control)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the next read sees the runtime gone


def _serve(engine: Any, data: bytes, fds: list[int], control: socket.socket, children: set[int]) -> None:
    """Fork a worker for each ``spawn`` request in ``data``, with the socket that came with it."""
    try:
        for line in data.decode().splitlines():
            message = json.loads(line)
            if message.get("op") == "spawn" and fds:
                pid = _spawn(engine, message, fds.pop(0), control)
                children.add(pid)
                _send(control, {"op": "spawned", "id": message["id"], "pid": pid})
    finally:
        for fd in fds:
            os.close(fd)


def _reap(children: set[int], control: socket.socket) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        children.discard(pid)
        _send(control, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _set_command_line(args: list[str]) -> None:
    """Show ``args`` as this process's command line (``ps``, /proc/<pid>/cmdline), cut to fit: a forked worker
    names its own deployment, not the zygote's model. Written over the original arguments' memory, as
    setproctitle does; the kernel says where that is (fields 48 and 49 of /proc/self/stat). Best effort."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        after_name = stat[stat.rindex(b")") + 2:].split()  # fields from the 3rd on (the name may hold spaces)
        start, end = int(after_name[45]), int(after_name[46])
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    if start <= 0 or size <= 1:
        return
    # One line ended by a NUL, then spaces to the end: a last byte that is not NUL tells the kernel to show the
    # area up to the first NUL (not the whole area, padding included).
    text = " ".join(args).encode()[: size - 1] + b"\0"
    ctypes.memmove(start, text.ljust(size, b" "), size)


def _redirect_output(path: str) -> None:
    """The worker writes to its allocation's log, not the log of a zygote that other deployments share."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _spawn(engine: Any, message: dict[str, Any], fd: int, control: socket.socket) -> int:
    pid = os.fork()
    if pid:
        os.close(fd)
        return pid
    # The child: a worker serving on the inherited socket with the zygote's engine.
    code = 1
    try:
        control.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if message.get("log"):
            _redirect_output(message["log"])
        settings = _settings({**message["settings"], "fd": fd, "parent_pid": os.getppid()})
        # `ps` and tests find a deployment's workers by this; the zygote's own arguments name only its model.
        argv = sys.orig_argv
        head = argv[: argv.index(MODULE) + 1] if MODULE in argv else [*argv[:1], "-m", MODULE]
        _set_command_line([*head, "--deployment-id", settings.deployment_id, "--allocation-id", settings.allocation_id])
        engine.num_threads = settings.num_threads  # serve() sets the thread pools' variables
        from .server import serve

        code = serve(settings, engine=engine)
    except BaseException:  # never return into the zygote's loop
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="infernetes worker-zygote")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--termination-log", type=Path)
    parser.add_argument("--model-id", help="for `ps` (each forked worker shows its own deployment instead)")
    args = parser.parse_args(argv)
    sys.exit(run_zygote(args.model_dir, args.control_fd, args.termination_log))


if __name__ == "__main__":
    main()
