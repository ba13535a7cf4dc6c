"""The endpoint spec models: documented bodies accepted with Elasticsearch's defaults, every rule enforced."""

from __future__ import annotations

import pytest
from es_examples import DOCUMENTED_BODIES, INVALID_BODIES

from infernetes.operator.errors import InfernetesError
from infernetes.operator.spec import parse_endpoint

# Rules that need the model store or other endpoints are checked by the service, not by the spec alone.
NEEDS_STATE = {"model-task-mismatch", "unknown-model", "unknown-deployment"}


@pytest.mark.parametrize(("task", "inference_id", "body"), DOCUMENTED_BODIES, ids=[b[1] for b in DOCUMENTED_BODIES])
def test_documented_bodies_are_accepted(task: str, inference_id: str, body: dict) -> None:
    spec = parse_endpoint(task, inference_id, body)
    assert spec.task_type == task
    assert spec.chunking.resolved() == {"strategy": "sentence", "max_chunk_size": 250, "sentence_overlap": 1}


def test_defaults_resolve_as_elasticsearch() -> None:
    _, _, e5 = DOCUMENTED_BODIES[2]
    spec = parse_endpoint("text_embedding", "my-e5-model", e5)
    assert spec.deployment_id == "my-e5-model"  # an endpoint's own deployment is named after it
    assert not spec.reuses_deployment
    assert spec.task_settings() == {}
    rerank = parse_endpoint("rerank", "r", DOCUMENTED_BODIES[1][2])
    assert rerank.task_settings() == {"return_documents": True}
    assert rerank.settings.adaptive
    reuse = parse_endpoint("sparse_embedding", "use_existing_deployment", DOCUMENTED_BODIES[5][2])
    assert reuse.reuses_deployment and reuse.deployment_id == ".elser_model_2"


def test_chunking_defaults_per_strategy() -> None:
    base = DOCUMENTED_BODIES[2][2]
    word = parse_endpoint("text_embedding", "w", {**base, "chunking_settings": {
        "strategy": "word", "max_chunk_size": 100, "overlap": 50}})
    assert word.chunking.resolved() == {"strategy": "word", "max_chunk_size": 100, "overlap": 50}
    sentence = parse_endpoint("text_embedding", "s", {**base, "chunking_settings": {
        "strategy": "sentence", "max_chunk_size": 20}})
    assert sentence.chunking.resolved() == {"strategy": "sentence", "max_chunk_size": 20, "sentence_overlap": 1}
    none = parse_endpoint("text_embedding", "n", {**base, "chunking_settings": {"strategy": "none"}})
    assert none.chunking.resolved() == {"strategy": "none"}


@pytest.mark.parametrize("threads", [1, 2, 4, 8, 16, 32])
def test_every_power_of_two_thread_count_is_accepted(threads: int) -> None:
    body = {"service": "elasticsearch", "service_settings": {"num_allocations": 1, "num_threads": threads,
                                                             "model_id": "m"}}
    assert parse_endpoint("text_embedding", "e", body).settings.num_threads == threads


@pytest.mark.parametrize(
    ("case", "task", "inference_id", "body", "status", "error_type", "reason"),
    [c for c in INVALID_BODIES if c[0] not in NEEDS_STATE],
    ids=[c[0] for c in INVALID_BODIES if c[0] not in NEEDS_STATE],
)
def test_invalid_bodies_are_rejected(case, task, inference_id, body, status, error_type, reason) -> None:
    with pytest.raises(InfernetesError) as info:
        parse_endpoint(task, inference_id, body)
    assert info.value.status == status
    assert info.value.error_type == error_type
    assert reason in info.value.reason


def test_all_errors_are_listed_at_once() -> None:
    body = {
        "service": "elasticsearch",
        "service_settings": {"num_threads": 3, "num_allocations": 1, "model_id": "m"},
        "chunking_settings": {"strategy": "word", "max_chunk_size": 5, "overlap": 0},
        "task_settings": {"top_n": 0},
    }
    with pytest.raises(InfernetesError) as info:
        parse_endpoint("rerank", "e", body)
    reason = info.value.reason
    assert reason.startswith("Validation Failed: 1: ") and "3: " in reason
    assert "[num_threads] must be a power of 2" in reason
    assert "[max_chunk_size] must be between 10 and 300" in reason
    assert "[top_n] must be a positive integer" in reason
