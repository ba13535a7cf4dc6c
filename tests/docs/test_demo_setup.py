"""`infernetes serve --demo` set-up: the reranker is trained once per data directory, shows its
progress with an estimate of the time left, and leaves nothing behind but the model."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from infernetes.operator import demo
from infernetes.worker.modelstore import ModelStore


def test_progress_lines_estimate_the_time_left(monkeypatch):
    clock = iter([100.0 + 2 * i for i in range(20)])  # one step every 2 s; the first call starts the clock
    monkeypatch.setattr(demo.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    update = demo.training_progress(out)
    for step in range(1, 11):
        update(step, 10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 9, lines  # one per tenth, from the second step on (the first has no pace yet)
    assert lines[0] == "training .rerank-v1: 2/10 steps, 2 s elapsed, about 16 s left"
    assert lines[-1] == "training .rerank-v1: 10/10 steps, 18 s elapsed, about 0 s left"


@pytest.mark.slow
def test_reranker_is_trained_once_per_data_dir(tmp_path: Path, reranker_dir: Path, monkeypatch):
    trained: list[Path] = []

    def fake_train(base: Path, target: Path, *, steps: int, progress=None) -> Path:
        # The real training is what the session's reranker_dir fixture ran; here only how often it runs counts.
        trained.append(target)
        for step in range(1, steps + 1):
            if progress:
                progress(step, steps)
        shutil.copytree(reranker_dir, target)
        return target

    monkeypatch.setattr(demo, "train_reranker", fake_train)
    monkeypatch.setattr(demo, "DEMO_MODELS", {".rerank-v1": demo.DEMO_MODELS[".rerank-v1"]})
    store = ModelStore(tmp_path / "models")
    steps: list[int] = []
    first = list(demo.install_demo_models(store, progress=lambda step, total: steps.append(step)))
    assert len(trained) == 1 and steps[-1] == demo.RERANKER_STEPS
    assert any("once per data directory" in line for line in first), first
    assert store.get(".rerank-v1") is not None and "stand-in" in store.get(".rerank-v1").source
    assert not trained[0].exists(), "the training folder is removed once the model is in the store"
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".demo-reranker-")]
    again = list(demo.install_demo_models(store))
    assert len(trained) == 1 and again == [], "a second start trains nothing"
