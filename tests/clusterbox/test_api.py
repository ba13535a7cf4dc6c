"""The box's core API semantics: sorted lists, selectors, metadata on writes, conflicts,
generation, errors as Status objects."""

from __future__ import annotations

from typing import Any

import httpx

CM = "/api/v1/namespaces/{ns}/configmaps"
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"


def _ns(api: httpx.Client, name: str) -> None:
    assert api.post("/api/v1/namespaces", json={"metadata": {"name": name}}).status_code == 201


def _cm(api: httpx.Client, ns: str, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    r = api.post(CM.format(ns=ns), json={"metadata": {"name": name, "labels": labels or {}}, "data": {"k": name}})
    assert r.status_code == 201, r.text
    return r.json()


def deployment(name: str, image: str = "infernetes:dev", replicas: int = 1, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "main", "image": image}], **spec}}}}


def _names(r: httpx.Response) -> list[tuple[str, str]]:
    assert r.status_code == 200, r.text
    return [(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in r.json()["items"]]


def test_lists_are_sorted_by_namespace_then_name_not_by_insertion(api: httpx.Client) -> None:
    _ns(api, "zeta")
    _ns(api, "alpha")
    for ns, name in [("zeta", "b"), ("alpha", "c"), ("zeta", "a"), ("alpha", "a"), ("default", "m")]:
        _cm(api, ns, name)
    assert _names(api.get(CM.format(ns="zeta"))) == [("zeta", "a"), ("zeta", "b")]
    assert _names(api.get("/api/v1/configmaps")) == [("alpha", "a"), ("alpha", "c"), ("default", "m"), ("zeta", "a"), ("zeta", "b")]
    listing = api.get("/api/v1/configmaps").json()
    assert listing["kind"] == "ConfigMapList" and int(listing["metadata"]["resourceVersion"]) > 0


def test_limit_and_continue_page_through_the_sorted_list(api: httpx.Client) -> None:
    for name in ["e", "b", "d", "a", "c"]:
        _cm(api, "default", name)
    first = api.get(CM.format(ns="default"), params={"limit": 2}).json()
    assert [o["metadata"]["name"] for o in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 3
    rest = api.get(CM.format(ns="default"), params={"limit": 10, "continue": first["metadata"]["continue"]}).json()
    assert [o["metadata"]["name"] for o in rest["items"]] == ["c", "d", "e"] and "continue" not in rest["metadata"]


def test_label_selectors_are_applied_by_the_server(api: httpx.Client) -> None:
    _cm(api, "default", "a", {"app": "x", "tier": "web"})
    _cm(api, "default", "b", {"app": "y"})
    _cm(api, "default", "c", {"app": "z", "tier": "db"})
    url = CM.format(ns="default")
    sel = lambda s: [n for _, n in _names(api.get(url, params={"labelSelector": s}))]  # noqa: E731
    assert sel("app=x") == ["a"]
    assert sel("app!=x") == ["b", "c"]
    assert sel("app in (x,z)") == ["a", "c"]
    assert sel("app notin (x, z)") == ["b"]
    assert sel("tier") == ["a", "c"]
    assert sel("!tier") == ["b"]
    assert sel("app in (x,z),tier=db") == ["c"]
    bad = api.get(url, params={"labelSelector": "app in x"})
    assert bad.status_code == 400 and bad.json()["kind"] == "Status"


def test_field_selectors_name_namespace_and_pod_phase(api: httpx.Client) -> None:
    _ns(api, "other")
    _cm(api, "default", "a")
    _cm(api, "other", "a")
    _cm(api, "default", "b")
    assert _names(api.get("/api/v1/configmaps", params={"fieldSelector": "metadata.name=a"})) == [("default", "a"), ("other", "a")]
    assert _names(api.get("/api/v1/configmaps", params={"fieldSelector": "metadata.namespace!=default"})) == [("other", "a")]
    for name, phase in [("p1", "Running"), ("p2", "Pending")]:
        pod = {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
        assert api.post("/api/v1/namespaces/default/pods", json=pod).status_code == 201
        r = api.patch(f"/api/v1/namespaces/default/pods/{name}/status", json={"status": {"phase": phase}},
                      headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200, r.text
    assert _names(api.get("/api/v1/pods", params={"fieldSelector": "status.phase=Running"})) == [("default", "p1")]
    refused = api.get("/api/v1/configmaps", params={"fieldSelector": "data.k=a"})
    assert refused.status_code == 400 and "field label not supported" in refused.json()["message"]


def test_every_write_gets_uid_timestamp_and_a_new_resource_version(api: httpx.Client) -> None:
    a = _cm(api, "default", "a")
    meta = a["metadata"]
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z") and meta["resourceVersion"]
    a["data"] = {"k": "changed"}
    b = api.put(f"{CM.format(ns='default')}/a", json=a).json()
    assert int(b["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert b["metadata"]["uid"] == meta["uid"] and b["metadata"]["creationTimestamp"] == meta["creationTimestamp"]
    same = api.put(f"{CM.format(ns='default')}/a", json=b).json()
    assert same["metadata"]["resourceVersion"] == b["metadata"]["resourceVersion"], "a no-op write changes nothing"


def test_update_with_a_stale_resource_version_is_409_conflict(api: httpx.Client) -> None:
    a = _cm(api, "default", "a")
    fresh = dict(a, data={"k": "1"})
    assert api.put(f"{CM.format(ns='default')}/a", json=fresh).status_code == 200
    stale = dict(a, data={"k": "2"})  # still carries the first resourceVersion
    r = api.put(f"{CM.format(ns='default')}/a", json=stale)
    assert r.status_code == 409
    body = r.json()
    assert body["kind"] == "Status" and body["reason"] == "Conflict" and "the object has been modified" in body["message"]
    assert api.get(f"{CM.format(ns='default')}/a").json()["data"] == {"k": "1"}


def test_errors_are_status_objects(api: httpx.Client) -> None:
    _cm(api, "default", "a")
    dup = api.post(CM.format(ns="default"), json={"metadata": {"name": "a"}})
    assert dup.status_code == 409 and dup.json()["reason"] == "AlreadyExists"
    missing = api.get(f"{CM.format(ns='default')}/nope")
    assert missing.status_code == 404 and missing.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": 'configmaps "nope" not found',
        "reason": "NotFound", "details": {"name": "nope", "kind": "configmaps"}, "code": 404}
    bad = api.post(CM.format(ns="default"), json={"metadata": {"name": "Not_A_Name"}})
    assert bad.status_code == 422 and bad.json()["reason"] == "Invalid"
    assert bad.json()["details"]["causes"][0]["field"] == "metadata.name"
    no_ns = api.post(CM.format(ns="ghost"), json={"metadata": {"name": "a"}})
    assert no_ns.status_code == 404 and no_ns.json()["message"] == 'namespaces "ghost" not found'
    assert api.delete("/api/v1/namespaces/default").status_code == 403, "default may not be deleted"
    garbage = api.post(CM.format(ns="default"), content=b"{not json", headers={"Content-Type": "application/json"})
    assert garbage.status_code == 400 and garbage.json()["reason"] == "BadRequest"
    invalid_deploy = api.post(DEPLOY, json={"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}}}})
    assert invalid_deploy.status_code == 422 and "spec.template" in invalid_deploy.text


def test_generation_is_bumped_by_spec_changes_only(api: httpx.Client) -> None:
    created = api.post(DEPLOY, json=deployment("web")).json()
    assert created["metadata"]["generation"] == 1
    merge = {"Content-Type": "application/merge-patch+json"}
    labelled = api.patch(f"{DEPLOY}/web", json={"metadata": {"labels": {"extra": "1"}}}, headers=merge).json()
    assert labelled["metadata"]["generation"] == 1
    status = api.patch(f"{DEPLOY}/web/status", json={"status": {"replicas": 1}}, headers=merge).json()
    assert status["metadata"]["generation"] == 1 and status["status"] == {"replicas": 1}
    scaled = api.patch(f"{DEPLOY}/web", json={"spec": {"replicas": 3}}, headers=merge).json()
    assert scaled["metadata"]["generation"] == 2
    assert "generation" not in _cm(api, "default", "a")["metadata"], "ConfigMaps have no generation"


def test_status_is_dropped_on_create_and_kept_by_main_writes(api: httpx.Client) -> None:
    body = deployment("web")
    body["status"] = {"replicas": 9}
    created = api.post(DEPLOY, json=body).json()
    assert "status" not in created
    api.put(f"{DEPLOY}/web/status", json={**created, "status": {"readyReplicas": 1}})
    main = api.get(f"{DEPLOY}/web").json()
    main["status"] = {"readyReplicas": 5}
    main["spec"]["replicas"] = 2
    after = api.put(f"{DEPLOY}/web", json=main).json()
    assert after["status"] == {"readyReplicas": 1} and after["spec"]["replicas"] == 2


def test_discovery_documents(api: httpx.Client) -> None:
    assert api.get("/api").json()["versions"] == ["v1"]
    groups = {g["name"] for g in api.get("/apis").json()["groups"]}
    assert {"apps", "rbac.authorization.k8s.io", "coordination.k8s.io", "policy", "networking.k8s.io",
            "discovery.k8s.io", "apiextensions.k8s.io"} <= groups
    apps = {r["name"]: r for r in api.get("/apis/apps/v1").json()["resources"]}
    assert apps["deployments/scale"]["kind"] == "Scale" and apps["deployments"]["shortNames"] == ["deploy"]
    doc = api.get("/openapi/v3/apis/apps/v1").json()
    assert "io.k8s.api.apps.v1.Deployment" in doc["components"]["schemas"]
    assert "/apis/apps/v1/namespaces/{namespace}/deployments/{name}" in doc["paths"]
