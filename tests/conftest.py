from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import ServerThread, build_tiny_sentence_model, minilm_path  # noqa: E402

from infernetes.worker.modelstore import ModelStore  # noqa: E402


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sentence_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path, tiny_model_dir: Path) -> Iterator[ServerThread]:
    """One embedded server for the integration tests, with MiniLM ("minilm") and a tiny model ("tiny")."""
    data_dir = tmp_path_factory.mktemp("serve")
    store = ModelStore(data_dir / "models")
    store.import_folder(minilm_dir, "minilm")
    store.import_folder(tiny_model_dir, "tiny")
    with ServerThread(data_dir) as srv:
        yield srv
