"""Settings of one worker process (one allocation), as one frozen object.

Every setting can come from the command line (``infernetes worker --num-threads 2``) or from
the environment (``INFERNETES_WORKER_NUM_THREADS=2``), which is how the operator configures pods.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "INFERNETES_WORKER_"
# Settings passed only through the environment (a command line is visible to every local user in `ps`).
SECRET_FIELDS = ("auth_token",)
AUTH_TOKEN_ENV = ENV_PREFIX + "AUTH_TOKEN"


@dataclass(frozen=True)
class WorkerSettings:
    model_dir: Path
    deployment_id: str = "default"
    allocation_id: str = "0"
    num_threads: int = 1
    host: str = "127.0.0.1"
    port: int = 8080
    # An inherited listening socket (the local runtime keeps the port stable across restarts).
    fd: int | None = None
    # A Unix socket path where the embedded gateway's binary hop reaches /infer (worker/hop.py); HTTP stays.
    ipc_path: Path | None = None
    # Inputs (rows) waiting or running before new requests get 429 (Elasticsearch's queue_capacity).
    queue_capacity: int = 1024
    # Batches are cut when their padded token count (rows x longest row) would pass this.
    max_batch_tokens: int = 8192
    max_batch_size: int = 128
    # Batches over this many padded tokens run in slices, so a batch whose requests are all given up stops early.
    cancel_slice_tokens: int = 2048
    # What one forward pass costs beyond its padded tokens, in tokens: a batch of rows of mixed lengths runs as
    # the passes of similar lengths that cost least (batcher.plan_forwards); a huge value runs each batch as one.
    # Every weight is read once per pass and products of few rows run far below the machine's peak: on MiniLM
    # with one thread (issue 16) a 10-token input costs as much as ~35 tokens of a large batch, and linear layers
    # of 10, 40, 160 and 320 rows reach 0.4, 0.75, 0.9 and 0.95 of the large-matmul speed (rows / (rows + 15..25)).
    # Counted low, so that a batch is split only where the padding saved is clearly larger.
    forward_overhead_tokens: int = 24
    max_inputs: int = 1024
    # Seconds a terminating worker keeps serving the requests it has already accepted.
    drain_timeout: float = 30.0
    # Where a fatal start-up error is written (Kubernetes shows it as the container's termination message).
    termination_log: Path | None = None
    # Exit when this process is gone (the embedded runtime that started the worker).
    parent_pid: int | None = None
    log_level: str = "warning"
    # The credential the gateway sends (``Authorization: Bearer ...``); when set, every call but health,
    # readiness and metrics without it is refused. Comes from the environment, never the command line.
    auth_token: str | None = field(default=None, repr=False)
    # Request bodies larger than this are refused with 413 before they are read (the gateway caps at 32 MiB).
    max_body_bytes: int = 64 * 1024 * 1024
    # Where the model runs: auto (the GPU when torch sees one), cpu, or cuda (fails to start without a GPU).
    device: str = "auto"

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> WorkerSettings:
        parser = argparse.ArgumentParser(prog="infernetes worker", description="Serve one allocation of one model.")
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            env = os.environ.get(ENV_PREFIX + f.name.upper())
            kind = _type_of(f.type)
            default = kind(env) if env is not None else (None if f.name == "model_dir" else f.default)
            shown = "(hidden)" if f.name in SECRET_FIELDS and default else default
            parser.add_argument(flag, type=kind, default=default, required=f.name == "model_dir" and env is None,
                                help=f"(env {ENV_PREFIX}{f.name.upper()}; default {shown})")
        args = parser.parse_args(argv)
        return cls(**vars(args))


def from_environment(present: set[str]) -> dict[str, Any]:
    """The settings not in ``present`` that the environment sets (``INFERNETES_WORKER_<NAME>``), typed."""
    out: dict[str, Any] = {}
    for f in fields(WorkerSettings):
        raw = os.environ.get(ENV_PREFIX + f.name.upper())
        if f.name not in present and raw is not None:
            out[f.name] = _type_of(f.type)(raw)
    return out


def _type_of(annotation: object) -> type:
    text = str(annotation)
    if "Path" in text:
        return Path
    if "float" in text:
        return float
    if "int" in text:
        return int
    return str
