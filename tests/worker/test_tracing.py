"""The transformer runs as a verified TorchScript trace, with the eager model's exact outputs."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer, SparseEncoder

from infernetes.worker.tracing import TracedModel, trace_transformer

pytestmark = pytest.mark.slow

TEXTS = ["How do I bake bread at home?", "a much longer passage about the northern lights " * 20, "hi"]


@pytest.mark.parametrize("kind", ["text_embedding", "sparse_embedding", "rerank"])
def test_traced_models_give_the_eager_outputs(kind, minilm_dir, splade_dir, reranker_dir):
    cls, path, rows = {
        "text_embedding": (SentenceTransformer, minilm_dir, TEXTS),
        "sparse_embedding": (SparseEncoder, splade_dir, TEXTS),
        "rerank": (CrossEncoder, reranker_dir, [("bread", t) for t in TEXTS]),
    }[kind]
    model = cls(str(path), device="cpu")
    features = model.preprocess(rows)
    with torch.inference_mode():
        expected = model.forward(dict(features))
        assert trace_transformer(model)
        assert isinstance(model[0].model, TracedModel)
        got = model.forward(dict(model.preprocess(rows)))
    key = "scores" if kind == "rerank" else "sentence_embedding"
    assert torch.allclose(got[key], expected[key], atol=1e-5)


def test_unusual_calls_go_to_the_eager_model(minilm_dir):
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    assert trace_transformer(model)
    traced = model[0].model
    features = model.preprocess(["hello"])
    args = {k: features[k] for k in traced.names}
    with torch.inference_mode():
        out = traced(**args, output_hidden_states=True, return_dict=True)
        assert out.hidden_states is not None  # a real model output, from the eager model
        assert set(traced(**args, return_dict=True)) == {"last_hidden_state"}


def test_a_trace_that_disagrees_is_not_used(minilm_dir, caplog):
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    other = SentenceTransformer(str(minilm_dir), device="cpu")
    with torch.no_grad():
        for p in other[0].model.parameters():
            p.mul_(0.5)

    class Flip(torch.nn.Module):
        """One model while traced, another afterwards: what a shape-dependent branch does to a trace."""

        def __init__(self) -> None:
            super().__init__()
            self.eager, self.other = model[0].model, other[0].model
            self.config = self.eager.config
            self.calls = 0

        def forward(self, **kwargs):
            self.calls += 1
            return (self.other if self.calls == 1 else self.eager)(**kwargs)

    flip = Flip()
    model[0].model = flip
    assert not trace_transformer(model)
    assert model[0].model is flip  # left as it was
    assert flip.calls >= 2
    assert "differs from the eager model" in caplog.text
