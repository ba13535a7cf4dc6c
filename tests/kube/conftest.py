from __future__ import annotations

import pytest

from infernetes.operator.kube.settings import OperatorSettings


@pytest.fixture
def operator_settings() -> OperatorSettings:
    return OperatorSettings(image="registry.example/infernetes:test", status_interval_s=0.3, retry_delay_s=1)
