"""Deletion as the real server does it: finalizers hold an object (deletionTimestamp set), the
garbage collector removes dependents in the background (background, foreground and orphan
propagation), namespaces take their contents with them."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import wait_for
from .test_api import DEPLOY, deployment

CM = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


def _owned(api: httpx.Client, name: str, owner: dict[str, Any], block: bool = False) -> dict[str, Any]:
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
           "controller": True, **({"blockOwnerDeletion": True} if block else {})}
    r = api.post(CM, json={"metadata": {"name": name, "ownerReferences": [ref]}})
    assert r.status_code == 201, r.text
    return r.json()


def _gone(api: httpx.Client, path: str) -> bool:
    return api.get(path).status_code == 404


def test_finalizers_hold_deletion_until_they_are_removed(api: httpx.Client) -> None:
    api.post(CM, json={"metadata": {"name": "held", "finalizers": ["infernetes.dev/cleanup"]}})
    r = api.delete(f"{CM}/held")
    assert r.status_code == 200
    held = api.get(f"{CM}/held").json()
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["infernetes.dev/cleanup"]
    more = api.patch(f"{CM}/held", json={"metadata": {"finalizers": ["infernetes.dev/cleanup", "another"]}}, headers=MERGE)
    assert more.status_code == 422, "no new finalizer once deletion started"
    assert api.delete(f"{CM}/held").status_code == 200 and not _gone(api, f"{CM}/held"), "deleting again changes nothing"
    api.patch(f"{CM}/held", json={"metadata": {"finalizers": None}}, headers=MERGE)
    assert _gone(api, f"{CM}/held")


def test_background_propagation_collects_dependents_after_the_owner_is_gone(api: httpx.Client) -> None:
    owner = api.post(DEPLOY, json=deployment("web")).json()
    _owned(api, "child-a", owner)
    _owned(api, "child-b", owner)
    api.post(CM, json={"metadata": {"name": "unrelated"}})
    r = api.request("DELETE", f"{DEPLOY}/web", json={"propagationPolicy": "Background"})
    assert r.status_code == 200 and _gone(api, f"{DEPLOY}/web"), "the owner goes first"
    wait_for(lambda: _gone(api, f"{CM}/child-a") and _gone(api, f"{CM}/child-b"), what="the dependents to be collected")
    assert not _gone(api, f"{CM}/unrelated")


def test_a_dependent_whose_owner_never_existed_is_collected(api: httpx.Client) -> None:
    ghost = {"metadata": {"name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}}
    _owned(api, "orphaned", ghost)
    wait_for(lambda: _gone(api, f"{CM}/orphaned"), what="the dangling dependent to be collected")


def test_orphan_propagation_keeps_dependents_without_the_reference(api: httpx.Client) -> None:
    owner = api.post(DEPLOY, json=deployment("web")).json()
    _owned(api, "child", owner)
    api.delete(f"{DEPLOY}/web", params={"propagationPolicy": "Orphan"})
    wait_for(lambda: _gone(api, f"{DEPLOY}/web"), what="the owner to go")
    child = api.get(f"{CM}/child").json()
    assert "ownerReferences" not in child["metadata"]


def test_foreground_propagation_keeps_the_owner_until_blocking_dependents_are_gone(api: httpx.Client) -> None:
    owner = api.post(DEPLOY, json=deployment("web")).json()
    _owned(api, "child", owner, block=True)
    api.patch(f"{CM}/child", json={"metadata": {"finalizers": ["hold"]}}, headers=MERGE)
    api.request("DELETE", f"{DEPLOY}/web", json={"propagationPolicy": "Foreground"})
    waiting = api.get(f"{DEPLOY}/web").json()
    assert waiting["metadata"]["deletionTimestamp"] and "foregroundDeletion" in waiting["metadata"]["finalizers"]
    wait_for(lambda: api.get(f"{CM}/child").json()["metadata"].get("deletionTimestamp"), what="the dependent to be deleted")
    assert not _gone(api, f"{DEPLOY}/web"), "the owner waits for its blocking dependent"
    api.patch(f"{CM}/child", json={"metadata": {"finalizers": None}}, headers=MERGE)
    wait_for(lambda: _gone(api, f"{DEPLOY}/web") and _gone(api, f"{CM}/child"), what="the owner to follow its dependent")


def test_deleting_a_namespace_deletes_its_contents(api: httpx.Client) -> None:
    api.post("/api/v1/namespaces", json={"metadata": {"name": "temp"}})
    api.post("/api/v1/namespaces/temp/configmaps", json={"metadata": {"name": "a"}})
    api.delete("/api/v1/namespaces/temp")
    refused = api.post("/api/v1/namespaces/temp/configmaps", json={"metadata": {"name": "b"}})
    assert refused.status_code in (403, 404)
    wait_for(lambda: _gone(api, "/api/v1/namespaces/temp"), what="the namespace to finish terminating")
    assert _gone(api, "/api/v1/namespaces/temp/configmaps/a")


def test_delete_preconditions(api: httpx.Client) -> None:
    api.post(CM, json={"metadata": {"name": "a"}})
    r = api.request("DELETE", f"{CM}/a", json={"preconditions": {"uid": "wrong"}})
    assert r.status_code == 409 and not _gone(api, f"{CM}/a")
