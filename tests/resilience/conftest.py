"""The resilience suite: attacks on the system, bounded in time, on loopback. Its figures (requests sent,
fuzz cases tried, 5xx seen, requests lost, recovery times) are collected here and written as JSON to
$INFERNETES_RESILIENCE_OUT (default build/resilience.json; `make resilience` writes bench/results/)."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="session")
def figures() -> dict[str, Any]:
    return FIGURES


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not FIGURES:
        return
    out = Path(os.environ.get("INFERNETES_RESILIENCE_OUT", ROOT / "build" / "resilience.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    # Merged into what is there: bench/large_inputs.py writes its own keys into the same file, and under
    # pytest-xdist each test process writes the figures of the tests it ran (one at a time: the lock).
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = json.loads(out.read_text()) if out.exists() else {}
        report.update({"suite": "tests/resilience", "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                       "passed": exitstatus == 0, **FIGURES})
        report = dict(sorted(report.items()))
        out.write_text(json.dumps(report, indent=2) + "\n")
