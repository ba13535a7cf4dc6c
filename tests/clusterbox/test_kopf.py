"""kopf, the operator framework the product uses, runs against the box: it logs in with the
admin token over TLS, watches a custom resource of the real CRD, patches
status (pruned by the CRD schema as a real server prunes it), and its finalizer holds deletion."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import kopf
import pytest

from clusterbox import ClusterBox

from .conftest import wait_for
from .test_crds import IE, endpoint


@pytest.fixture
def operator(box: ClusterBox, crds: Any) -> Iterator[dict[str, Any]]:
    registry = kopf.OperatorRegistry()
    seen: dict[str, Any] = {"created": [], "deleted": []}

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=box.url, token=box.admin_token, ca_path=str(box.ca_path), default_namespace="default")

    @kopf.on.create("infernetes.dev", "v1alpha1", "inferenceendpoints", registry=registry)
    def created(name: str, patch: kopf.Patch, **_: Any) -> dict[str, Any]:
        seen["created"].append(name)
        patch.status["state"] = "started"
        return {"handler": "result"}  # kopf writes it to status.created: not in the schema, so pruned

    @kopf.on.delete("infernetes.dev", "v1alpha1", "inferenceendpoints", registry=registry)
    def deleted(name: str, **_: Any) -> None:
        seen["deleted"].append(name)

    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        settings = kopf.OperatorSettings()
        settings.watching.server_timeout = 5
        settings.posting.enabled = False
        try:
            asyncio.run(kopf.operator(registry=registry, settings=settings, standalone=True, namespaces=["default"],
                                      stop_flag=stop, ready_flag=ready))
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture
            errors.append(exc)

    thread = threading.Thread(target=run, name="kopf", daemon=True)
    thread.start()
    try:
        assert ready.wait(30), f"kopf did not start: {errors!r}"
        yield seen
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors


def test_kopf_reconciles_a_custom_resource_on_the_box(api: httpx.Client, operator: dict[str, Any]) -> None:
    assert api.post(IE, json=endpoint("e")).status_code == 201
    obj = wait_for(lambda: (o := api.get(f"{IE}/e").json()).get("status", {}).get("state") == "started" and o,
                   timeout=30, what="kopf's status patch")
    assert operator["created"] == ["e"]
    assert "created" not in obj["status"], "the CRD prunes what its schema does not declare"
    assert obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    assert api.delete(f"{IE}/e").status_code == 200
    wait_for(lambda: api.get(f"{IE}/e").status_code == 404, timeout=30, what="kopf to release its finalizer")
    assert operator["deleted"] == ["e"]
