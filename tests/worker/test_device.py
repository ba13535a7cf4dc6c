"""The CUDA path, tested without a GPU: device selection, the reduced-precision check (on CPU tensors in bf16),
and a worker that is asked for a GPU it does not have."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch

from infernetes.worker.app import WorkerState
from infernetes.worker.config import WorkerSettings
from infernetes.worker.engine import (
    MIN_HALF_COSINE,
    Engine,
    InferRequest,
    Job,
    OnnxTextEmbeddingEngine,
    TextEmbeddingEngine,
    choose_dtype,
    min_cosine,
    select_device,
)
from infernetes.worker.modelstore import ModelStore


@pytest.mark.parametrize(("requested", "cuda", "device"), [
    ("auto", False, "cpu"),
    ("auto", True, "cuda"),
    ("cpu", True, "cpu"),
    ("cpu", False, "cpu"),
    ("cuda", True, "cuda"),
])
def test_select_device(requested, cuda, device):
    assert select_device(requested, cuda) == device


def test_select_device_refuses_cuda_without_a_gpu_and_unknown_names():
    with pytest.raises(ValueError, match="no CUDA device"):
        select_device("cuda", False)
    with pytest.raises(ValueError, match="unknown device"):
        select_device("gpu", True)


def test_min_cosine_per_row_and_zero_rows_agree():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    assert min_cosine(a, a.clone()) == pytest.approx(1.0)
    b = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, -1.0]])  # the last row turned by 90 degrees
    assert min_cosine(a, b) == pytest.approx(0.0, abs=1e-6)
    # A 1-D output (rerank scores) is one vector.
    assert min_cosine(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.01])) > 0.9999


class Cancelling(torch.nn.Module):
    """(x + 1000) - 1000 in the module's own dtype: bf16's 8 bits of mantissa lose x entirely."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(1000.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.offset.dtype) + self.offset) - self.offset


def test_choose_dtype_keeps_a_reduced_precision_only_when_outputs_stay_close():
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    linear = torch.nn.Linear(16, 32)
    model, dtype, measured = choose_dtype(linear, lambda m: m(x.to(next(m.parameters()).dtype)), (torch.bfloat16,))
    assert dtype == torch.bfloat16 and model is not linear and model.weight.dtype == torch.bfloat16
    assert measured["bfloat16"] >= MIN_HALF_COSINE
    assert linear.weight.dtype == torch.float32  # tried on a copy: the fp32 weights are untouched

    cancelling = Cancelling()
    model, dtype, measured = choose_dtype(cancelling, lambda m: m(x), (torch.bfloat16,))
    assert dtype == torch.float32 and model is cancelling and cancelling.offset.dtype == torch.float32
    assert measured["bfloat16"] < MIN_HALF_COSINE


def test_choose_dtype_threshold_is_what_decides():
    x = torch.randn(4, 8)
    linear = torch.nn.Linear(8, 8)
    run = lambda m: m(x.to(next(m.parameters()).dtype))  # noqa: E731
    _, dtype, measured = choose_dtype(linear, run, (torch.bfloat16,), threshold=1.0 + 1e-9)
    assert dtype == torch.float32 and measured["bfloat16"] < 1.0 + 1e-9


def test_engines_with_their_own_forward_stay_on_the_cpu(tmp_path):
    assert TextEmbeddingEngine.forward is Engine.forward
    info = ModelStore(tmp_path).get("none")  # no model needed: placement is decided before anything moves
    onnx = OnnxTextEmbeddingEngine.__new__(OnnxTextEmbeddingEngine)
    assert info is None and onnx.runs_on_gpu is False
    onnx.device = "cpu"
    assert onnx.place("auto", cuda_available=True) == "cpu" and onnx.device == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        onnx.place("cuda", cuda_available=False)


@pytest.mark.slow
def test_a_model_moved_to_bf16_serves_close_to_fp32(tmp_path, minilm_dir, monkeypatch):
    """The whole move on CPU tensors: trace removed, the check batch decides bf16, forward returns float32."""
    store = ModelStore(tmp_path)
    info = store.import_folder(minilm_dir, "minilm")
    engine = TextEmbeddingEngine(info, 1)
    engine.load()
    texts = ["How do I bake bread at home?", "what causes the northern lights"]

    def embed() -> np.ndarray:
        job = Job(request=InferRequest(inputs=texts), rows=list(texts), loop=None, future=None)  # type: ignore[arg-type]
        for seg in engine.prepare(job, 1 << 20, 1 << 20):
            engine.store(seg, engine.forward(seg.features))
        return np.stack(job.outputs)

    fp32 = embed()
    # A machine "with a GPU": auto picks cuda; the move itself is what place() does after selecting it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto", torch.cuda.is_available()) == "cuda"
    engine.move("cpu", (torch.bfloat16,))
    assert engine.traced is False
    assert set(engine.dtype_check) == {"bfloat16"}
    assert engine.dtype == ("bfloat16" if engine.dtype_check["bfloat16"] >= MIN_HALF_COSINE else "float32")
    reduced = embed()
    assert reduced.dtype == np.float32
    cosines = np.sum(fp32 * reduced, axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(reduced, axis=1))
    assert cosines.min() >= MIN_HALF_COSINE


@pytest.mark.slow
def test_a_worker_asked_for_a_gpu_it_lacks_fails_with_the_reason(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = ModelStore(tmp_path / "models").import_folder(tiny_model_dir, "tiny")
    state = WorkerState(WorkerSettings(model_dir=info.path, device="cuda"))
    state.load()
    assert state.state == "failed" and "no CUDA device" in (state.failure or "")
    ok = WorkerState(WorkerSettings(model_dir=info.path, device="auto"))
    ok.load()
    try:
        assert ok.state == "started" and ok.stats()["device"] == "cpu"
        assert orjson.loads(orjson.dumps(ok.stats()))["dtype"] == "float32"
    finally:
        ok.batcher.stop()
