"""Load a model once, then fork a worker per allocation: allocations share the read-only weights.

A zygote process imports torch and the model's library and loads the weights, without starting any
thread pool; each allocation is a ``fork()`` of it, so the weights and the imported code stay in
pages shared copy-on-write (measured: an extra allocation of all-MiniLM-L6-v2 costs ~12 MB private
memory instead of ~500 MB, and starts in well under a second instead of seconds).

The embedded runtime talks to the zygote over a Unix socket: ``spawn`` messages carry the
allocation's settings and its listening socket (SCM_RIGHTS); the zygote answers ``spawned``
with the pid, and reports ``exited`` with the exit code when a worker ends. A zygote whose model
cannot load exits with code 3; a zygote whose runtime disappears exits, and its workers follow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .config import ENV_PREFIX, WorkerSettings
from .server import EXIT_MODEL_FAILED, configure_threads


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _settings(base: dict[str, Any]) -> WorkerSettings:
    known = {f.name for f in fields(WorkerSettings)}
    values = {k: v for k, v in base.items() if k in known}
    # Settings the runtime does not pass come from the environment, as `infernetes worker` reads them.
    if "device" not in values and ENV_PREFIX + "DEVICE" in os.environ:
        values["device"] = os.environ[ENV_PREFIX + "DEVICE"]
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
        if data == b"":  # the runtime is gone: stop, and let the workers notice their parent left
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            return 0
        if data:
            for line in data.decode().splitlines():
                message = json.loads(line)
                if message.get("op") == "spawn" and fds:
                    pid = _spawn(engine, message, fds.pop(0), control)
                    children.add(pid)
                    _send(control, {"op": "spawned", "id": message["id"], "pid": pid})
            for fd in fds:
                os.close(fd)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            _send(control, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


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
        settings = _settings({**message["settings"], "fd": fd, "parent_pid": os.getppid()})
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
    parser.add_argument("--deployment-id", help="for `ps`: forked workers keep this command line")
    args = parser.parse_args(argv)
    sys.exit(run_zygote(args.model_dir, args.control_fd, args.termination_log))


if __name__ == "__main__":
    main()
