"""Run a model's transformer as one TorchScript graph, so the GIL is released once per batch.

In eager mode a BERT forward is a few hundred small torch calls, and each one releases and takes
back the GIL. In a worker, the HTTP event loop and the tokeniser thread hold the GIL in between,
and the model thread queues behind them at every call: measured on all-MiniLM-L6-v2, a 32-input
batch runs ~30% slower next to a thread that is busy a third of the time. A traced graph runs in
C++ from start to end and is not slowed down at all.

:func:`trace_transformer` traces the Hugging Face model inside a sentence-transformers
``Transformer`` module (used by SentenceTransformer, SparseEncoder and CrossEncoder alike) and
puts it in place only after checking, on inputs of other batch sizes and lengths than the traced
one, that it gives the eager model's outputs; otherwise the model stays eager. The trace
shares the model's parameters (no copy of the weights).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch  # this module is imported only where torch is already loaded (Engine.load)

log = logging.getLogger("infernetes.worker")

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
TOLERANCE = 1e-4
# Inputs that differ from the trace's in batch size, length and padding.
TRACE_SAMPLE = ["a sample input for tracing", "a second, somewhat longer sample input for tracing the model"]
PROBES = [
    ["short"],
    ["a query", "a much longer passage about the northern lights, " * 12, "a mid-sized sentence about bread"],
]


def trace_transformer(model: Any, probes: list[list[Any]] | None = None, sample: list[Any] | None = None) -> bool:
    """Swap ``model[0].model`` for a verified trace; returns whether it did."""
    from sentence_transformers.base.modules.transformer import Transformer

    module = model[0]
    if not isinstance(module, Transformer):
        return False
    config = module.modality_config.get("text", {})
    output = config.get("method_output_name")
    if config.get("method") != "forward" or not isinstance(output, str):
        return False
    eager = module.model
    features = model.preprocess(sample or TRACE_SAMPLE)
    names = tuple(n for n in INPUT_NAMES if n in features)
    if set(k for k, v in features.items() if isinstance(v, torch.Tensor)) != set(names):
        return False

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = eager

        def forward(self, *tensors: Any) -> Any:
            return self.inner(**dict(zip(names, tensors)), return_dict=True)[output]

    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # The tracer warns about every shape-dependent Python branch; the probes below check them.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(Flat().eval(), tuple(features[n] for n in names), check_trace=False, strict=False)
            replacement = TracedModel(eager, traced, names, output)
            for texts in probes or PROBES:
                probe = model.preprocess(texts)
                args = {n: probe[n] for n in names}
                expected = eager(**args, return_dict=True)[output]
                got = replacement(**args, return_dict=True)[output]
                if got.shape != expected.shape or not torch.allclose(got, expected, atol=TOLERANCE, rtol=TOLERANCE):
                    log.warning("the traced %s differs from the eager model: running it eagerly", type(eager).__name__)
                    return False
    except Exception as exc:  # tracing is an optimisation: any model it cannot handle stays eager
        log.warning("could not trace %s (%s): running it eagerly", type(eager).__name__, exc)
        return False
    module.model = replacement
    return True


class TracedModel(torch.nn.Module):
    """Stands in for the Hugging Face model: the trace for plain inputs, the eager model otherwise."""

    def __init__(self, eager: Any, traced: Any, names: tuple[str, ...], output: str) -> None:
        super().__init__()
        self.eager = eager
        self.traced = traced
        self.names = names
        self.output = output
        self.config = eager.config

    def forward(self, **kwargs: Any) -> Any:
        tensors = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        if tuple(n for n in self.names if n in tensors) != self.names or len(tensors) != len(self.names) or \
                kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
            return self.eager(**kwargs)
        return {self.output: self.traced(*(tensors[n] for n in self.names))}
