"""The six request bodies of Elasticsearch's "Create an inference endpoint (elasticsearch service)" page,
and its one response example (../shared/reference/elasticsearch-create-inference-endpoint.txt)."""

from __future__ import annotations

from typing import Any

# (task_type, inference_id, body)
DOCUMENTED_BODIES: list[tuple[str, str, dict[str, Any]]] = [
    ("sparse_embedding", "my-elser-model", {
        "service": "elasticsearch",
        "service_settings": {
            "adaptive_allocations": {"enabled": True, "min_number_of_allocations": 1, "max_number_of_allocations": 4},
            "num_threads": 1,
            "model_id": ".elser_model_2",
        },
    }),
    ("rerank", "my-elastic-rerank", {
        "service": "elasticsearch",
        "service_settings": {
            "model_id": ".rerank-v1",
            "num_threads": 1,
            "adaptive_allocations": {"enabled": True, "min_number_of_allocations": 1, "max_number_of_allocations": 4},
        },
    }),
    ("text_embedding", "my-e5-model", {
        "service": "elasticsearch",
        "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": ".multilingual-e5-small"},
    }),
    ("text_embedding", "my-msmarco-minilm-model", {
        "service": "elasticsearch",
        "service_settings": {"num_allocations": 1, "num_threads": 1, "model_id": "msmarco-MiniLM-L12-cos-v5"},
    }),
    ("text_embedding", "my-e5-model", {
        "service": "elasticsearch",
        "service_settings": {
            "adaptive_allocations": {"enabled": True, "min_number_of_allocations": 3, "max_number_of_allocations": 10},
            "num_threads": 1,
            "model_id": ".multilingual-e5-small",
        },
    }),
    ("sparse_embedding", "use_existing_deployment", {
        "service": "elasticsearch",
        "service_settings": {"deployment_id": ".elser_model_2"},
    }),
]

DOCUMENTED_RESPONSE: dict[str, Any] = {
    "inference_id": "use_existing_deployment",
    "task_type": "sparse_embedding",
    "service": "elasticsearch",
    "service_settings": {
        "num_allocations": 2,
        "num_threads": 1,
        "model_id": ".elser_model_2",
        "deployment_id": ".elser_model_2",
    },
    "chunking_settings": {"strategy": "sentence", "max_chunk_size": 250, "sentence_overlap": 1},
}


def body(**service_settings: Any) -> dict[str, Any]:
    return {"service": "elasticsearch", "service_settings": service_settings}


def ok_settings(**extra: Any) -> dict[str, Any]:
    return {"num_allocations": 1, "num_threads": 1, "model_id": "minilm", **extra}


# Bodies every rule must reject: (id, task_type, inference_id, body, status, error type, words the reason contains).
INVALID_BODIES: list[tuple[str, str, str, Any, int, str, str]] = [
    ("missing-num-threads", "text_embedding", "e", body(num_allocations=1, model_id="minilm"), 400,
     "validation_exception", "[service_settings] does not contain the required setting [num_threads]"),
    ("num-threads-not-power-of-2", "text_embedding", "e", body(**ok_settings(num_threads=3)), 400,
     "validation_exception", "[num_threads] must be a power of 2 less than or equal to 32"),
    ("num-threads-above-32", "text_embedding", "e", body(**ok_settings(num_threads=64)), 400,
     "validation_exception", "[num_threads] must be a power of 2 less than or equal to 32"),
    ("num-threads-zero", "text_embedding", "e", body(**ok_settings(num_threads=0)), 400,
     "validation_exception", "[num_threads]"),
    ("num-threads-string", "text_embedding", "e", body(**ok_settings(num_threads="2")), 400,
     "validation_exception", "field [service_settings.num_threads] is not of the expected type"),
    ("num-allocations-zero", "text_embedding", "e", body(**ok_settings(num_allocations=0)), 400,
     "validation_exception", "[num_allocations] must be a positive integer"),
    ("num-allocations-with-adaptive", "text_embedding", "e",
     body(**ok_settings(adaptive_allocations={"enabled": True, "max_number_of_allocations": 2})), 400,
     "validation_exception", "[num_allocations] cannot be set when [adaptive_allocations] is enabled"),
    ("no-allocations-at-all", "text_embedding", "e", body(num_threads=1, model_id="minilm"), 400,
     "validation_exception", "does not contain one of the required settings [num_allocations, adaptive_allocations]"),
    ("min-negative", "text_embedding", "e",
     body(num_threads=1, model_id="minilm", adaptive_allocations={"enabled": True, "min_number_of_allocations": -1}),
     400, "validation_exception", "[min_number_of_allocations] must be a non-negative integer"),
    ("max-below-min", "text_embedding", "e",
     body(num_threads=1, model_id="minilm", adaptive_allocations={
         "enabled": True, "min_number_of_allocations": 3, "max_number_of_allocations": 2}),
     400, "validation_exception",
     "[max_number_of_allocations] must be greater than or equal to [min_number_of_allocations]"),
    ("max-zero", "text_embedding", "e",
     body(num_threads=1, model_id="minilm", adaptive_allocations={"enabled": True, "max_number_of_allocations": 0}),
     400, "validation_exception", "[max_number_of_allocations] must be a positive integer"),
    ("inference-id-equals-model-id", "text_embedding", "minilm", body(**ok_settings()), 400,
     "validation_exception", "must not match the model ID"),
    ("missing-model-id", "text_embedding", "e", body(num_allocations=1, num_threads=1), 400,
     "validation_exception", "[service_settings] does not contain the required setting [model_id]"),
    ("model-task-mismatch", "sparse_embedding", "e", body(**ok_settings()), 400,
     "status_exception", "serves the [text_embedding] task and cannot be used for the [sparse_embedding] task"),
    ("unknown-model", "text_embedding", "e", body(**ok_settings(model_id="no-such-model")), 404,
     "resource_not_found_exception", "Could not find trained model [no-such-model]; import it"),
    ("unknown-deployment", "text_embedding", "e", body(deployment_id="no-such-deployment"), 404,
     "resource_not_found_exception", "Could not find deployment [no-such-deployment]"),
    ("sentence-chunk-too-small", "text_embedding", "e",
     {**body(**ok_settings()), "chunking_settings": {"strategy": "sentence", "max_chunk_size": 19}}, 400,
     "validation_exception", "[max_chunk_size] must be between 20 and 300 for the [sentence] chunking strategy"),
    ("word-chunk-too-small", "text_embedding", "e",
     {**body(**ok_settings()), "chunking_settings": {"strategy": "word", "max_chunk_size": 9, "overlap": 1}}, 400,
     "validation_exception", "[max_chunk_size] must be between 10 and 300 for the [word] chunking strategy"),
    ("chunk-too-large", "text_embedding", "e",
     {**body(**ok_settings()), "chunking_settings": {"strategy": "sentence", "max_chunk_size": 301}}, 400,
     "validation_exception", "[max_chunk_size] must be between 20 and 300"),
    ("overlap-with-sentence", "text_embedding", "e",
     {**body(**ok_settings()), "chunking_settings": {"strategy": "sentence", "max_chunk_size": 100, "overlap": 10}},
     400, "validation_exception", "[overlap] is only applicable to the [word] chunking strategy"),
    ("overlap-above-half", "text_embedding", "e",
     {**body(**ok_settings()), "chunking_settings": {"strategy": "word", "max_chunk_size": 100, "overlap": 51}},
     400, "validation_exception", "[overlap] must be less than or equal to half of [max_chunk_size]"),
    ("sentence-overlap-with-word", "text_embedding", "e",
     {**body(**ok_settings()), "chunking_settings": {
         "strategy": "word", "max_chunk_size": 100, "overlap": 10, "sentence_overlap": 1}},
     400, "validation_exception", "[sentence_overlap] is only applicable to the [sentence] chunking strategy"),
    ("sentence-overlap-two", "text_embedding", "e",
     {**body(**ok_settings()), "chunking_settings": {"strategy": "sentence", "max_chunk_size": 100,
                                                     "sentence_overlap": 2}},
     400, "validation_exception", "[sentence_overlap] must be 0 or 1"),
    ("chunking-without-strategy", "text_embedding", "e",
     {**body(**ok_settings()), "chunking_settings": {"max_chunk_size": 100}}, 400,
     "validation_exception", "[chunking_settings] does not contain the required setting [strategy]"),
    ("unknown-service-setting", "text_embedding", "e", body(**ok_settings(dimension=3)), 400,
     "validation_exception", "settings [{service_settings.dimension=3}] unknown to the [elasticsearch] service"),
    ("unknown-top-level-field", "text_embedding", "e", {**body(**ok_settings()), "extra": 1}, 400,
     "validation_exception", "settings [{extra=1}] unknown"),
    ("unknown-adaptive-field", "text_embedding", "e",
     body(num_threads=1, model_id="minilm", adaptive_allocations={"enabled": True, "step": 2}), 400,
     "validation_exception", "service_settings.adaptive_allocations.step"),
    ("return-documents-on-embeddings", "text_embedding", "e",
     {**body(**ok_settings()), "task_settings": {"return_documents": True}}, 400,
     "validation_exception", "[task_settings.return_documents] is only applicable to the [rerank] task"),
    ("unknown-task-setting", "rerank", "e",
     {**body(**ok_settings()), "task_settings": {"top_k": 3}}, 400,
     "validation_exception", "task_settings.top_k"),
    ("other-service", "text_embedding", "e", {**body(**ok_settings()), "service": "openai"}, 400,
     "status_exception", "Unknown service [openai]"),
    ("missing-service", "text_embedding", "e", {"service_settings": ok_settings()}, 400,
     "status_exception", "Model configuration is missing a service"),
    ("missing-service-settings", "text_embedding", "e", {"service": "elasticsearch"}, 400,
     "validation_exception", "[body] does not contain the required setting [service_settings]"),
    ("unknown-task-type", "completion", "e", body(**ok_settings()), 400,
     "status_exception", "Unknown task_type [completion]"),
    ("inference-id-upper-case", "text_embedding", "My-Endpoint", body(**ok_settings()), 400,
     "validation_exception", "Invalid [inference_id] [My-Endpoint]"),
    ("body-not-an-object", "text_embedding", "e", [1, 2], 400,
     "status_exception", "request body must be a JSON object"),
]
