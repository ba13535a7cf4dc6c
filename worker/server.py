"""Run one worker: uvicorn serving the worker app, exiting non-zero if the model cannot load."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from .config import WorkerSettings

EXIT_MODEL_FAILED = 3


def configure_threads(num_threads: int) -> None:
    """Thread pools read these at import time: set them before torch is imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(num_threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def watch_parent(parent_pid: int) -> None:
    """Terminate (gracefully) when the process that started us has gone, e.g. after a kill -9."""

    def loop() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def serve(settings: WorkerSettings, engine: Any = None) -> int:
    """Serve one allocation; ``engine`` is a model already loaded (by a zygote, before fork)."""
    configure_threads(settings.num_threads)
    if settings.parent_pid:
        watch_parent(settings.parent_pid)
    # Hand the GIL over sooner: the model thread's short Python steps between torch calls wait less.
    sys.setswitchinterval(0.001)
    import uvicorn

    from .app import create_app, freeze_heap

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, engine)
    state = app.state.worker
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout),
        timeout_keep_alive=75,
        loop="auto",
        http="auto",
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        async def watch_load() -> None:
            await asyncio.to_thread(state.loaded.wait)
            if state.failure:
                print(f"infernetes-worker: fatal: {state.failure}", file=sys.stderr, flush=True)
                server.should_exit = True
            else:
                state.metrics.frozen_objects.set(freeze_heap())

        watcher = asyncio.create_task(watch_load())
        if settings.ipc_path is not None:
            # Listening before uvicorn starts, so the hop is there once /readyz says ready.
            await _start_hop(app, settings, server)
        # An inherited socket is wrapped here rather than given to uvicorn as `fd`: uvicorn takes every fd for a
        # UNIX socket, and the event loop then never sets TCP_NODELAY on accepted connections (40 ms stalls).
        sockets = [socket.socket(fileno=settings.fd)] if settings.fd is not None else None
        await server.serve(sockets=sockets)
        watcher.cancel()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    return EXIT_MODEL_FAILED if state.failure else 0


async def _start_hop(app: Any, settings: WorkerSettings, server: Any) -> None:
    import orjson

    from .app import error_body
    from .hop import HopServer

    hop = HopServer(settings.ipc_path, app.state.hop_infer,
                    lambda status, kind, reason: orjson.dumps(error_body(status, kind, reason)),
                    settings.auth_token, settings.max_body_bytes, server.server_state)
    await hop.start()


def main(argv: list[str] | None = None) -> None:
    sys.exit(serve(WorkerSettings.from_args(argv)))
