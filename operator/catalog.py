"""Which models exist and what task each serves: the model store, seen from the control plane."""

from __future__ import annotations

from ..worker.modelstore import ModelInfo, ModelStore
from .errors import ResourceNotFound


class ModelCatalog:
    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def get(self, model_id: str) -> ModelInfo | None:
        return self.store.get(model_id)

    def list(self) -> list[ModelInfo]:
        return self.store.list()

    def resolve(self, model_id: str) -> ModelInfo:
        info = self.store.get(model_id)
        if info is None:
            raise ResourceNotFound(
                f"Could not find trained model [{model_id}]; import it into the model store with "
                f"`infernetes models import <folder> --model-id {model_id}`"
            )
        return info
