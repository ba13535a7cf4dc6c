from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubeharness import NS, Emulator, RunningOperator, declare_resources

from infernetes.operator.kube.client import Kube, KubeConfig
from infernetes.operator.kube.settings import OperatorSettings


@pytest.fixture
def cluster(kmock: Emulator) -> Emulator:
    declare_resources(kmock)
    return kmock


@pytest.fixture
def kube_config(cluster: Emulator) -> KubeConfig:
    return KubeConfig(host=str(cluster.url).rstrip("/"), token=lambda: None, verify=False, namespace=NS)


@pytest.fixture
async def kube(kube_config: KubeConfig) -> AsyncIterator[Kube]:
    client = Kube(kube_config)
    yield client
    await client.close()


@pytest.fixture
def operator_settings() -> OperatorSettings:
    return OperatorSettings(image="registry.example/infernetes:test", status_interval_s=0.3, retry_delay_s=1)


@pytest.fixture
async def operator(kube_config: KubeConfig, operator_settings: OperatorSettings) -> AsyncIterator[RunningOperator]:
    running = RunningOperator(kube_config, operator_settings)
    await running.start()
    yield running
    await running.stop()


