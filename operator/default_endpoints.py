"""Elasticsearch's default inference endpoints (8.16+), and the ``elasticsearch`` service's description.

``.elser-2-elasticsearch``, ``.multilingual-e5-small-elasticsearch`` and ``.rerank-v1-elasticsearch``
exist without a PUT: ``GET _inference`` lists them, and the first inference call creates the
endpoint (its deployment with adaptive allocations from 0), downloading the built-in model if
needed (from Elastic's model repository when one is configured). They cannot be created or
deleted by users, as in Elasticsearch.
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, tuple[str, str]] = {
    ".elser-2-elasticsearch": ("sparse_embedding", ".elser_model_2"),
    ".multilingual-e5-small-elasticsearch": ("text_embedding", ".multilingual-e5-small"),
    ".rerank-v1-elasticsearch": ("rerank", ".rerank-v1"),
}
MAX_ALLOCATIONS = 32


def is_default(inference_id: str) -> bool:
    return inference_id in DEFAULTS


def default_body(inference_id: str) -> dict[str, Any]:
    """The PUT body a default endpoint is created with on first use."""
    _task, model_id = DEFAULTS[inference_id]
    return {"service": "elasticsearch", "service_settings": {
        "adaptive_allocations": {"enabled": True, "min_number_of_allocations": 0,
                                 "max_number_of_allocations": MAX_ALLOCATIONS},
        "num_threads": 1, "model_id": model_id}}


def reserved_put(inference_id: str) -> str:
    return (f"[{inference_id}] is a reserved inference ID. Cannot create a new inference endpoint with a reserved "
            "ID.")


def reserved_delete(inference_id: str) -> str:
    return f"[{inference_id}] is a reserved inference endpoint. Cannot delete a reserved endpoint."


def services() -> list[dict[str, Any]]:
    """``GET _inference/_services``: the ``elasticsearch`` service's configuration schema."""

    def field(description: str, label: str, kind: str, required: bool, default: Any = None,
              updatable: bool = False, tasks: list[str] | None = None) -> dict[str, Any]:
        return {"default_value": default, "description": description, "label": label, "required": required,
                "sensitive": False, "updatable": updatable, "type": kind,
                "supported_task_types": tasks or ["text_embedding", "sparse_embedding", "rerank"]}

    return [{
        "service": "elasticsearch",
        "name": "Elasticsearch",
        "task_types": ["text_embedding", "sparse_embedding", "rerank"],
        "configurations": {
            "num_allocations": field("The total number of allocations this model is assigned across machine "
                                     "learning nodes.", "Number Allocations", "int", False, 1, True),
            "num_threads": field("Sets the number of threads used by each model allocation during inference.",
                                 "Number Threads", "int", True, 2),
            "model_id": field("The name of the model to use for the inference task.", "Model ID", "str", True,
                              ".multilingual-e5-small"),
            "deployment_id": field("The model deployment to use (optional instead of model_id).", "Deployment ID",
                                   "str", False),
        },
    }]
