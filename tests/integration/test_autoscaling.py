"""Adaptive allocations on the embedded runtime with a real model: from zero, up under load, back to zero."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
from helpers import ServerThread, deployment_stats

from infernetes.operator.autoscaler import AutoscalerSettings
from infernetes.operator.embedded import EmbeddedOptions
from infernetes.worker.modelstore import ModelStore

pytestmark = pytest.mark.slow

FAST = AutoscalerSettings(interval_s=0.5, target_utilization=0.75, smoothing_s=1.0, drain_s=2.0,
                          scale_down_window_s=3.0, idle_to_zero_s=5.0)


def allocation_status(client, eid):
    return deployment_stats(client, eid)["allocation_status"]


def wait_for(predicate, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.25)
    raise AssertionError("condition not met in time")


def test_from_zero_to_two_and_back(tmp_path, minilm_dir):
    ModelStore(tmp_path / "models").import_folder(minilm_dir, "minilm")
    with ServerThread(tmp_path, EmbeddedOptions(autoscaler=FAST)) as srv, srv.client(timeout=120) as client:
        created = client.put("/_inference/text_embedding/elastic", json={
            "service": "elasticsearch",
            "service_settings": {"num_threads": 1, "model_id": "minilm", "adaptive_allocations": {
                "enabled": True, "min_number_of_allocations": 0, "max_number_of_allocations": 2}}})
        assert created.status_code == 200, created.text
        assert allocation_status(client, "elastic") == {"allocation_count": 0, "target_allocation_count": 0,
                                                        "state": "fully_allocated"}
        # The first request is held while an allocation starts, then answered: never failed.
        first = client.post("/_inference/elastic", json={"input": "wake up"})
        assert first.status_code == 200, first.text
        assert allocation_status(client, "elastic")["allocation_count"] == 1

        # Sustained concurrent load brings the second allocation.
        stop = threading.Event()
        failures = []
        text = " ".join(["a longer passage of text to keep the model busy"] * 12)

        def load():
            while not stop.is_set():
                r = client.post("/_inference/elastic", json={"input": [text] * 4})
                if r.status_code != 200:
                    failures.append(r.status_code)

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            for _ in range(6):
                pool.submit(load)
            wait_for(lambda: allocation_status(client, "elastic") == {
                "allocation_count": 2, "target_allocation_count": 2, "state": "fully_allocated"})
            stop.set()
        assert failures == []

        # Idle: back to one after the window, then to zero after the idle period.
        wait_for(lambda: allocation_status(client, "elastic")["target_allocation_count"] == 0, timeout=60)
        wait_for(lambda: allocation_status(client, "elastic")["allocation_count"] == 0, timeout=60)
        metrics = client.get("/metrics").text
        assert 'infernetes_autoscaler_decisions_total{deployment="elastic",direction="up"}' in metrics
        assert 'infernetes_autoscaler_decisions_total{deployment="elastic",direction="down"}' in metrics
        # And from zero again, answered.
        assert client.post("/_inference/elastic", json={"input": "again"}).status_code == 200
