"""Worker settings: a worker forked from a zygote reads what the runtime does not pass from the environment,
as `infernetes worker` does."""

from __future__ import annotations

from pathlib import Path

from infernetes.worker import zygote


def test_a_forked_worker_takes_what_the_runtime_does_not_pass_from_the_environment(monkeypatch):
    monkeypatch.setenv("INFERNETES_WORKER_FORWARD_OVERHEAD_TOKENS", "7")
    monkeypatch.setenv("INFERNETES_WORKER_DEVICE", "cpu")
    monkeypatch.setenv("INFERNETES_WORKER_NUM_THREADS", "9")  # the runtime passes this one: its value wins
    settings = zygote._settings({"model_dir": "/models/m", "num_threads": 2})
    assert settings.forward_overhead_tokens == 7 and settings.device == "cpu"
    assert settings.num_threads == 2 and settings.model_dir == Path("/models/m")
