"""Which models exist and what task each serves: the model store plus the downloadable built-ins."""

from __future__ import annotations

from ..worker.download import PLATFORM_SUFFIX, Progress, builtin, canonical_id, offline_hint, pull
from ..worker.elastic_format import Uploads, eland_names_for
from ..worker.elastic_repository import pull_elastic, repository_url
from ..worker.modelstore import ModelInfo, ModelStore
from .errors import BadRequest, ResourceNotFound


class ModelCatalog:
    def __init__(self, store: ModelStore, *, hub: str | None = None, allow_download: bool = True) -> None:
        self.store = store
        self.hub = hub
        self.allow_download = allow_download

    def get(self, model_id: str) -> ModelInfo | None:
        """The model in the store (built-in aliases resolve to their canonical id; any ``<id>_linux-x86_64`` to
        ``<id>``, whose optimized variant the runtime serves)."""
        info = self.store.get(canonical_id(model_id))
        if info is None and model_id.endswith(PLATFORM_SUFFIX) and len(model_id) > len(PLATFORM_SUFFIX):
            info = self.store.get(model_id[: -len(PLATFORM_SUFFIX)])
        return info

    def list(self) -> list[ModelInfo]:
        return self.store.list()

    def downloadable(self, model_id: str) -> bool:
        return self.allow_download and builtin(model_id) is not None

    def task_of(self, model_id: str) -> str | None:
        info = self.get(model_id)
        if info is not None:
            return info.task_type
        spec = builtin(model_id)
        return spec.task_type if spec else None

    def resolve(self, model_id: str) -> ModelInfo:
        info = self.get(model_id)
        if info is None and Uploads(self.store).exists(model_id):
            raise BadRequest(
                f"Model [{model_id}] is not fully defined: upload the rest of its definition parts and its vocabulary "
                f"(PUT _ml/trained_models/{model_id}/definition/<part>, PUT _ml/trained_models/{model_id}/vocabulary) "
                "before using it"
            )
        if info is None:
            if builtin(model_id) is not None:
                raise ResourceNotFound(
                    f"Could not find trained model [{model_id}]: it is a built-in model that has not been "
                    f"downloaded; {offline_hint(canonical_id(model_id))}"
                )
            similar = eland_names_for(model_id, [m.model_id for m in self.store.list()])
            if similar:
                raise ResourceNotFound(f"Could not find trained model [{model_id}]; did you mean [{similar[0]}]? "
                                       "(Eland stores models under lowercase ids, a hub id's `/` as `__`)")
            raise ResourceNotFound(
                f"Could not find trained model [{model_id}]; import it into the model store with "
                f"`infernetes models import <folder> --model-id {model_id}`"
            )
        return info

    def check(self, model_id: str, task_type: str, inference_id: str) -> ModelInfo | None:
        """For PUT: the model must exist (or be a downloadable built-in) and serve the task."""
        task = self.task_of(model_id)
        if task is None or (self.get(model_id) is None and not self.downloadable(model_id)):
            self.resolve(model_id)  # raises the right 404
        if task != task_type:
            raise BadRequest(
                f"Model [{model_id}] serves the [{task}] task and cannot be used for the [{task_type}] task; "
                f"use PUT _inference/{task}/{inference_id}"
            )
        return self.get(model_id)

    def pull(self, model_id: str, progress: Progress | None = None) -> ModelInfo:
        """Download a built-in model into the store (blocking; run it off the event loop): from Elastic's model
        repository when $INFERNETES_MODEL_REPOSITORY names one, else from the hub."""
        repository = repository_url()
        if repository:
            return pull_elastic(self.store, model_id, repository, progress=progress)
        return pull(self.store, model_id, endpoint=self.hub, progress=progress)
