"""Patches as the real server applies them: merge patch (null removes), JSON patch, strategic
merge patch by the schemas' merge keys, and server-side apply with managed fields."""

from __future__ import annotations

from typing import Any

import httpx
import yaml

from .test_api import DEPLOY, deployment

MERGE = {"Content-Type": "application/merge-patch+json"}
JSONP = {"Content-Type": "application/json-patch+json"}
SMP = {"Content-Type": "application/strategic-merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def test_merge_patch_null_removes_a_key_and_replaces_lists(api: httpx.Client) -> None:
    api.post(DEPLOY, json=deployment("web", nodeSelector={"disk": "ssd"}, priorityClassName="high",
                                     imagePullSecrets=[{"name": "a"}]))
    patch = {"spec": {"template": {"spec": {"nodeSelector": None, "priorityClassName": None,
                                            "containers": [{"name": "main", "image": "other"}]}}}}
    r = api.patch(f"{DEPLOY}/web", json=patch, headers=MERGE)
    assert r.status_code == 200, r.text
    spec = _pod_spec(r.json())
    assert "nodeSelector" not in spec and "priorityClassName" not in spec
    assert spec["imagePullSecrets"] == [{"name": "a"}] and spec["containers"] == [{"name": "main", "image": "other"}]


def test_json_patch_operations_and_a_failed_test_op(api: httpx.Client) -> None:
    api.post(DEPLOY, json=deployment("web"))
    ops = [{"op": "replace", "path": "/spec/replicas", "value": 4},
           {"op": "add", "path": "/metadata/labels/extra", "value": "yes"},
           {"op": "remove", "path": "/metadata/labels/app"}]
    r = api.patch(f"{DEPLOY}/web", json=ops, headers=JSONP)
    assert r.status_code == 200, r.text
    assert r.json()["spec"]["replicas"] == 4 and r.json()["metadata"]["labels"] == {"extra": "yes"}
    failed = api.patch(f"{DEPLOY}/web", json=[{"op": "test", "path": "/spec/replicas", "value": 1}], headers=JSONP)
    assert failed.status_code == 422 and failed.json()["kind"] == "Status"


def test_strategic_merge_merges_lists_by_their_patch_merge_keys(api: httpx.Client) -> None:
    body = deployment("web", tolerations=[{"key": "a", "operator": "Exists"}],
                      volumes=[{"name": "v1", "emptyDir": {}}])
    body["spec"]["template"]["spec"]["containers"] = [
        {"name": "main", "image": "i", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
         "ports": [{"containerPort": 80}], "volumeMounts": [{"name": "v1", "mountPath": "/a"}]},
        {"name": "side", "image": "s"}]
    api.post(DEPLOY, json=body)
    patch = {"spec": {"template": {"spec": {
        "containers": [{"name": "main", "env": [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}, {"name": "A", "$patch": "delete"}],
                        "ports": [{"containerPort": 81}], "volumeMounts": [{"name": "v2", "mountPath": "/b"}]}],
        "volumes": [{"name": "v2", "emptyDir": {}}],
        "tolerations": [{"key": "b", "operator": "Exists"}],
        "$setElementOrder/containers": [{"name": "main"}, {"name": "side"}]}}}}
    r = api.patch(f"{DEPLOY}/web", json=patch, headers=SMP)
    assert r.status_code == 200, r.text
    spec = _pod_spec(r.json())
    main = next(c for c in spec["containers"] if c["name"] == "main")
    assert [c["name"] for c in spec["containers"]] == ["main", "side"], "the other container is kept"
    assert main["image"] == "i"
    assert main["env"] == [{"name": "B", "value": "20"}, {"name": "C", "value": "3"}]
    assert main["ports"] == [{"containerPort": 80}, {"containerPort": 81}]
    assert [m["mountPath"] for m in main["volumeMounts"]] == ["/a", "/b"]
    assert [v["name"] for v in spec["volumes"]] == ["v1", "v2"]
    # Tolerations have no merge key in the real schema: the list is replaced.
    assert spec["tolerations"] == [{"key": "b", "operator": "Exists"}]


def test_strategic_merge_is_refused_for_custom_resources(api: httpx.Client, crds: list[dict[str, Any]]) -> None:
    from .test_crds import IE, endpoint
    api.post(IE, json=endpoint("e"))
    r = api.patch(f"{IE}/e", json={"spec": {}}, headers=SMP)
    assert r.status_code == 415 and r.json()["reason"] == "UnsupportedMediaType"


def _apply(api: httpx.Client, obj: dict[str, Any], manager: str, force: bool = False) -> httpx.Response:
    params = {"fieldManager": manager, **({"force": "true"} if force else {})}
    return api.patch(f"{DEPLOY}/{obj['metadata']['name']}", content=yaml.safe_dump(obj), headers=APPLY, params=params)


def test_server_side_apply_removes_a_field_its_manager_stops_applying(api: httpx.Client) -> None:
    first = deployment("web", nodeSelector={"disk": "ssd"}, serviceAccountName="infernetes")
    first["metadata"]["labels"]["owner"] = "me"
    first["spec"]["template"]["spec"]["containers"].append({"name": "side", "image": "s"})
    r = _apply(api, first, "infernetes")
    assert r.status_code == 201, r.text
    # Another manager owns a label of its own: the apply must not remove it.
    api.patch(f"{DEPLOY}/web", json={"metadata": {"labels": {"team": "x"}}}, headers=MERGE, params={"fieldManager": "someone"})
    second = deployment("web")
    r = _apply(api, second, "infernetes")
    assert r.status_code == 200, r.text
    obj = r.json()
    spec = _pod_spec(obj)
    assert "nodeSelector" not in spec and "serviceAccountName" not in spec
    assert [c["name"] for c in spec["containers"]] == ["main"], "a list item no longer applied is removed"
    assert obj["metadata"]["labels"] == {"app": "web", "team": "x"}
    managers = {m["manager"]: m for m in obj["metadata"]["managedFields"]}
    assert managers["infernetes"]["operation"] == "Apply" and managers["someone"]["operation"] == "Update"
    assert "f:team" in managers["someone"]["fieldsV1"]["f:metadata"]["f:labels"]
    assert "f:nodeSelector" not in managers["infernetes"]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]


def test_server_side_apply_conflicts_without_force_and_takes_over_with_it(api: httpx.Client) -> None:
    assert api.post(DEPLOY, json=deployment("web", replicas=2), params={"fieldManager": "kubectl-create"}).status_code == 201
    mine = deployment("web", replicas=5)
    r = _apply(api, mine, "infernetes")
    assert r.status_code == 409
    body = r.json()
    assert body["reason"] == "Conflict" and body["details"]["causes"] == [
        {"type": "FieldManagerConflict", "message": 'conflict with "kubectl-create" using apps/v1', "field": ".spec.replicas"}]
    assert api.get(f"{DEPLOY}/web").json()["spec"]["replicas"] == 2
    same = deployment("web", replicas=2)  # the same value is shared ownership, not a conflict
    assert _apply(api, same, "infernetes").status_code == 200
    forced = _apply(api, mine, "infernetes", force=True)
    assert forced.status_code == 200 and forced.json()["spec"]["replicas"] == 5
    owners = {m["manager"]: m["fieldsV1"] for m in forced.json()["metadata"]["managedFields"]}
    assert "f:replicas" in owners["infernetes"]["f:spec"] and "f:replicas" not in owners["kubectl-create"].get("f:spec", {})


def test_apply_needs_a_field_manager_and_creates_when_absent(api: httpx.Client) -> None:
    obj = deployment("new")
    r = api.patch(f"{DEPLOY}/new", content=yaml.safe_dump(obj), headers=APPLY)
    assert r.status_code == 400 and "fieldManager" in r.json()["message"]
    created = _apply(api, obj, "infernetes")
    assert created.status_code == 201 and created.json()["metadata"]["uid"]
    again = _apply(api, obj, "infernetes")
    assert again.json()["metadata"]["resourceVersion"] == created.json()["metadata"]["resourceVersion"], "a no-op apply writes nothing"


def test_server_side_apply_of_status_is_its_own_manager_entry(api: httpx.Client, crds: list[dict[str, Any]]) -> None:
    from .test_crds import IE, endpoint
    api.post(IE, json=endpoint("e"))
    status = {"apiVersion": "infernetes.dev/v1alpha1", "kind": "InferenceEndpoint", "metadata": {"name": "e"},
              "spec": {"task_type": "rerank"}, "status": {"state": "started", "allocation_count": 1}}
    r = api.patch(f"{IE}/e/status", content=yaml.safe_dump(status), headers=APPLY, params={"fieldManager": "infernetes"})
    assert r.status_code == 200, r.text
    obj = r.json()
    assert obj["status"] == {"state": "started", "allocation_count": 1} and obj["spec"]["task_type"] == "text_embedding"
    entry = next(m for m in obj["metadata"]["managedFields"] if m["manager"] == "infernetes")
    assert entry["subresource"] == "status" and set(entry["fieldsV1"]) == {"f:status"}
    status["status"] = {"state": "started"}
    r = api.patch(f"{IE}/e/status", content=yaml.safe_dump(status), headers=APPLY, params={"fieldManager": "infernetes"})
    assert r.json()["status"] == {"state": "started"}, "a status field no longer applied is removed"


def test_a_patch_carrying_a_stale_resource_version_is_409(api: httpx.Client) -> None:
    created = api.post(DEPLOY, json=deployment("web")).json()
    rv = created["metadata"]["resourceVersion"]
    assert api.patch(f"{DEPLOY}/web", json={"spec": {"replicas": 2}, "metadata": {"resourceVersion": rv}}, headers=MERGE).status_code == 200
    stale = api.patch(f"{DEPLOY}/web", json={"spec": {"replicas": 3}, "metadata": {"resourceVersion": rv}}, headers=MERGE)
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
