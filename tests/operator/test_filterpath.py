from __future__ import annotations

import pytest

from infernetes.operator.filterpath import filter_path

DOC = {
    "endpoints": [
        {"inference_id": "a", "task_type": "rerank", "service_settings": {"model_id": "m", "num_threads": 1}},
        {"inference_id": "b", "task_type": "text_embedding", "service_settings": {"model_id": "n", "num_threads": 2}},
    ],
    "count": 2,
}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, DOC),
        ("count", {"count": 2}),
        ("endpoints.inference_id", {"endpoints": [{"inference_id": "a"}, {"inference_id": "b"}]}),
        ("endpoints.*.model_id", {"endpoints": [{"service_settings": {"model_id": "m"}},
                                                 {"service_settings": {"model_id": "n"}}]}),
        ("**.num_threads", {"endpoints": [{"service_settings": {"num_threads": 1}},
                                          {"service_settings": {"num_threads": 2}}]}),
        ("count,endpoints.task_type", {"endpoints": [{"task_type": "rerank"}, {"task_type": "text_embedding"}],
                                       "count": 2}),
        ("-endpoints", {"count": 2}),
        ("-endpoints.service_settings", {"endpoints": [{"inference_id": "a", "task_type": "rerank"},
                                                        {"inference_id": "b", "task_type": "text_embedding"}],
                                         "count": 2}),
        ("nothing", {}),
    ],
)
def test_filter_path(spec, expected):
    assert filter_path(DOC, spec) == expected
