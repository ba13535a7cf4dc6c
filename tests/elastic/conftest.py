"""Fixtures for the Eland tests: one virtualenv holding the real Eland CLI, and model folders it can read.

Eland needs ``transformers<5`` (the project runs 5.x), so it lives in a venv of its own, built once
and cached under ``$INFERNETES_ELAND_VENVS`` (default: the user's cache folder, ``~/.cache/infernetes/eland-venv``)
as ``<key>/``, the key naming the versions; later runs reuse it, from any checkout of the repository. CPU torch is installed first, and Eland without its ``[pytorch]``
extra, which pins a multi-GB CUDA torch (see shared/MODELS.md). When the test environment already has the
pinned torch (the project's .venv does), its files are hard-linked into the new venv instead of unpacking
the 190 MB wheel again (about 750 MB on disk); pip then installs only what is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import platformdirs
import pytest
from packaging.requirements import Requirement

TORCH = "torch==2.13.0"
ELAND = ["eland==9.2.0", "transformers[sentencepiece]<5", "sentence-transformers>=5,<6", "tqdm", "requests"]
KEY = hashlib.sha256(json.dumps([sys.version_info[:2], TORCH, ELAND]).encode()).hexdigest()[:12]
VENV = Path(os.environ.get("INFERNETES_ELAND_VENVS") or
            Path(platformdirs.user_cache_dir("infernetes")) / "eland-venv") / KEY
BUILD_TIMEOUT = 1800


def _report(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


@pytest.fixture(scope="session")
def eland_venv(request: pytest.FixtureRequest) -> Path:
    """The venv with ``eland_import_hub_model``; built on first use (a few minutes), reused afterwards."""
    done = VENV / ".complete"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / f"{KEY}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes never build it at once
        if not done.is_file():
            shutil.rmtree(VENV, ignore_errors=True)
            t0 = time.monotonic()
            _report(request.config, f"\nbuilding the Eland venv {VENV} (once; later runs reuse it)")
            python = str(VENV / "bin" / "python")
            pip = [python, "-I", "-m", "pip", "install", "-q", "--disable-pip-version-check"]

            def run(cmd: list[str]) -> str:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, cwd="/")
                if proc.returncode != 0:
                    shutil.rmtree(VENV, ignore_errors=True)
                    pytest.fail(f"building the Eland venv failed at {cmd[-1]}: {proc.stderr[-3000:]}")
                return proc.stdout

            run([sys.executable, "-I", "-m", "venv", str(VENV)])
            site = Path(run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip())
            if link_distribution(TORCH, site):
                _report(request.config, f"{TORCH} hard-linked from {sys.prefix}")
            else:
                run([*pip, TORCH])
            run([*pip, TORCH, *ELAND])
            done.write_text(f"built in {time.monotonic() - t0:.0f} s\n")
            _report(request.config, f"Eland venv built in {time.monotonic() - t0:.0f} s")
    return VENV


def link_distribution(requirement: str, target: Path) -> bool:
    """Hard-link (copy across file systems) the files of this environment's distribution into ``target``, a
    site-packages folder, when its version meets ``requirement``; its RECORD comes along, so pip counts it as
    installed. Scripts outside site-packages are left out. False when there is nothing that fits."""
    req = Requirement(requirement)
    try:
        dist = importlib.metadata.distribution(req.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    if not req.specifier.contains(dist.version, prereleases=True) or dist.files is None:
        return False
    root = Path(str(dist.locate_file(""))).resolve()
    for entry in dist.files:
        if entry.parts[0] == "..":
            continue
        source = root / entry
        if not source.is_file():
            continue
        dest = target / entry
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, dest)
        except OSError:
            shutil.copy2(source, dest)
    return True


def with_vocab_txt(source: Path, target: Path) -> Path:
    """A copy of a BERT folder with ``vocab.txt``: Eland loads the slow tokenizer, which needs it, and the
    SPLADE and reranker folders ship only ``tokenizer.json``."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.pt"))
    modules = target / "modules.json"
    if modules.is_file():  # saved by sentence-transformers 6: name the classes as Eland's 5.x knows them
        entries = json.loads(modules.read_text())
        for m in entries:
            m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[-1]
        modules.write_text(json.dumps(entries))
    if not (target / "vocab.txt").exists():
        vocab = json.loads((source / "tokenizer.json").read_text())["model"]["vocab"]
        (target / "vocab.txt").write_text("".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    return target


@pytest.fixture(scope="session")
def splade_bert_dir(tmp_path_factory: pytest.TempPathFactory, splade_dir: Path) -> Path:
    return with_vocab_txt(splade_dir, tmp_path_factory.mktemp("eland-src") / "splade")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return with_vocab_txt(tiny_model_dir, tmp_path_factory.mktemp("eland-src") / "tiny")


@pytest.fixture(scope="session")
def reranker_bert_dir(tmp_path_factory: pytest.TempPathFactory, reranker_dir: Path) -> Path:
    return with_vocab_txt(reranker_dir, tmp_path_factory.mktemp("eland-src") / "reranker")


@pytest.fixture
def timed(request: pytest.FixtureRequest) -> Callable[[str], contextlib.AbstractContextManager[None]]:
    """``with timed("what"):`` reports how long the block took on the terminal (build and upload times)."""

    @contextlib.contextmanager
    def timer(what: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        _report(request.config, f"{what}: {time.monotonic() - t0:.1f} s")

    return timer



@pytest.fixture(scope="session")
def tiny_elastic(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[bytes, dict, dict]:
    """The tiny sentence model traced as Eland traces a text_embedding model (with a search prefix): the
    TorchScript bytes, the config and the vocabulary, for the upload tests."""
    from elastic_helpers import elastic_files

    path, config, vocab = elastic_files(tiny_model_dir, tmp_path_factory.mktemp("tiny-elastic"),
                                        prefix_strings={"search": "query: "})
    return path.read_bytes(), config, vocab
