"""Shared pieces of the benchmarks: the machine's description, texts, ports, servers, load generators."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EXE = Path(sys.executable).with_name("infernetes")
QUERIES = [
    "How do I bake bread at home?",
    "what causes the northern lights",
    "best hiking trails near the lake",
    "symptoms of vitamin d deficiency",
    "how to reset a wifi router",
    "cheap flights to lisbon in may",
    "python list comprehension example",
    "why is the sky blue",
]
WORDS = ("the northern lights appear when charged particles from the sun reach the upper atmosphere "
         "near the poles and excite oxygen and nitrogen which then glow green red and purple across "
         "the night sky while scientists measure the solar wind and the magnetic field of the earth").split()


def die_with_parent() -> None:
    """preexec_fn for servers a benchmark starts: SIGTERM them when the benchmark's process dies, even by
    SIGKILL (a harness timeout), so no `infernetes serve` outlives the run that started it."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def texts(n: int) -> list[str]:
    return [f"{QUERIES[i % len(QUERIES)]} ({i})" for i in range(n)]


def passages(n: int, words: int = 200) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(words)) + f" ({i})" for i in range(n)]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    memory_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mb": memory_mb, "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads_default": torch.get_num_threads(),
            "platform": platform.platform(), "load_generator": "wrk" if shutil.which("wrk") else "aiohttp"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


class Serve:
    """`infernetes serve` in a subprocess, on a private data directory."""

    def __init__(self, *args: str, prefix: list[str] | None = None) -> None:
        self.prefix = prefix or []  # e.g. taskset -c 0-2: the CPUs the server may use
        self.dir = Path(tempfile.mkdtemp(prefix="infernetes-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def models(self, *cmd: str) -> None:
        subprocess.run([*self.prefix, str(EXE), "models", *cmd, "--data-dir", str(self.dir)], check=True, capture_output=True)

    def __enter__(self) -> Serve:
        self.proc = subprocess.Popen([*self.prefix, str(EXE), "serve", "--data-dir", str(self.dir), "--port", str(self.port),
                                      "--log-level", "warning", *self.args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent)
        wait_http(self.url)
        return self

    def put(self, task: str, inference_id: str, service_settings: dict[str, Any]) -> None:
        resp = httpx.put(f"{self.url}/_inference/{task}/{inference_id}", timeout=300,
                         json={"service": "elasticsearch", "service_settings": service_settings})
        resp.raise_for_status()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)


def dump(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
