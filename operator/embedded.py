"""Wiring of the embedded product: SQLite store + model store + local worker processes + gateway."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from ..worker.modelstore import ModelStore
from .autoscaler import AutoscalerSettings
from .catalog import ModelCatalog
from .gateway import GatewaySettings, create_app
from .runtime.local import LocalRuntime, LocalSettings
from .service import InferenceService, Limits
from .store import SqliteStore


@dataclass(frozen=True)
class EmbeddedOptions:
    max_inputs: int = 1024
    queue_capacity: int = 1024
    max_batch_tokens: int = 8192
    max_batch_size: int = 128
    hold_timeout_s: float = 120.0
    worker_log_level: str = "warning"
    # Where built-in models are downloaded from (default: $INFERNETES_MODEL_HUB, $HF_ENDPOINT, huggingface.co).
    model_hub: str | None = None
    allow_download: bool = True
    # Allocations x threads one deployment may run (see infernetes.operator.capacity); None: the machine's CPUs.
    max_allocated_processors: int | None = None
    autoscaler: AutoscalerSettings = AutoscalerSettings()
    gateway: GatewaySettings = GatewaySettings()


def build_app(data_dir: Path, options: EmbeddedOptions | None = None) -> FastAPI:
    options = options or EmbeddedOptions()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    models = ModelStore(data_dir / "models")
    models.clean_staging()
    catalog = ModelCatalog(models, hub=options.model_hub, allow_download=options.allow_download)
    runtime = LocalRuntime(
        LocalSettings(
            data_dir=data_dir,
            max_inputs=options.max_inputs,
            max_batch_tokens=options.max_batch_tokens,
            max_batch_size=options.max_batch_size,
            worker_log_level=options.worker_log_level,
            hold_timeout_s=options.hold_timeout_s,
            max_allocated_processors=options.max_allocated_processors,
        ),
        catalog,
        options.autoscaler,
    )
    service = InferenceService(
        SqliteStore(data_dir / "infernetes.db"),
        runtime,
        catalog,
        Limits(max_inputs=options.max_inputs, queue_capacity=options.queue_capacity),
        capacity=runtime.capacity,
    )
    return create_app(service, options.gateway, extra_registries=[runtime.autoscaler_metrics.registry])
