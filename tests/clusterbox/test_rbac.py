"""RBAC from the Roles, ClusterRoles and bindings stored in the box, for ServiceAccount tokens;
and OpenShift's blockOwnerDeletion admission."""

from __future__ import annotations

from typing import Any

import httpx

from clusterbox import ClusterBox

from .test_api import DEPLOY, deployment

RBAC = "/apis/rbac.authorization.k8s.io/v1"


def _grant(api: httpx.Client, name: str, rules: list[dict[str, Any]], sa: str = "operator", cluster: bool = False) -> None:
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": "default"}
    if cluster:
        assert api.post(f"{RBAC}/clusterroles", json={"metadata": {"name": name}, "rules": rules}).status_code == 201
        assert api.post(f"{RBAC}/clusterrolebindings", json={"metadata": {"name": name}, "subjects": [subject],
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}}).status_code == 201
    else:
        assert api.post(f"{RBAC}/namespaces/default/roles", json={"metadata": {"name": name}, "rules": rules}).status_code == 201
        assert api.post(f"{RBAC}/namespaces/default/rolebindings", json={"metadata": {"name": name}, "subjects": [subject],
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}}).status_code == 201


def test_a_service_account_without_the_rule_gets_403(box: ClusterBox, api: httpx.Client) -> None:
    api.post(DEPLOY, json=deployment("web"))
    with box.client(box.token_for("default", "operator")) as sa:
        r = sa.get(DEPLOY)
        assert r.status_code == 403
        assert r.json()["reason"] == "Forbidden" and r.json()["message"] == (
            'deployments.apps is forbidden: User "system:serviceaccount:default:operator" cannot list resource '
            '"deployments" in API group "apps" in the namespace "default"')
        _grant(api, "read", [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]}])
        assert sa.get(DEPLOY).status_code == 200
        assert sa.patch(f"{DEPLOY}/web", json={"spec": {"replicas": 2}},
                        headers={"Content-Type": "application/merge-patch+json"}).status_code == 403
        assert sa.get("/api/v1/namespaces/default/configmaps").status_code == 403, "another resource"
        assert sa.get("/apis/apps/v1/namespaces/kube-system/deployments").status_code == 403, "another namespace"
        assert sa.get("/apis/apps/v1/deployments").status_code == 403, "a Role does not grant the cluster scope"


def test_subresources_resource_names_and_cluster_roles(box: ClusterBox, api: httpx.Client) -> None:
    api.post(DEPLOY, json=deployment("web"))
    api.post(DEPLOY, json=deployment("other"))
    _grant(api, "scale-web", [{"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": ["web"],
                               "verbs": ["get", "patch"]}])
    merge = {"Content-Type": "application/merge-patch+json"}
    with box.client(box.token_for("default", "operator")) as sa:
        assert sa.patch(f"{DEPLOY}/web/scale", json={"spec": {"replicas": 2}}, headers=merge).status_code == 200
        assert sa.patch(f"{DEPLOY}/other/scale", json={"spec": {"replicas": 2}}, headers=merge).status_code == 403
        assert sa.patch(f"{DEPLOY}/web", json={"spec": {"replicas": 3}}, headers=merge).status_code == 403
        _grant(api, "cm-everywhere", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}], cluster=True)
        assert sa.get("/api/v1/configmaps").status_code == 200
        assert sa.post("/api/v1/namespaces/kube-system/configmaps", json={"metadata": {"name": "x"}}).status_code == 201


def test_no_token_or_an_unknown_token_is_401(box: ClusterBox) -> None:
    import httpx as h
    with h.Client(base_url=box.url, verify=str(box.ca_path)) as anon:
        assert anon.get("/api/v1/namespaces").status_code == 401
    with box.client("not-a-token") as bad:
        assert bad.get("/api/v1/namespaces").status_code == 401


def test_block_owner_deletion_needs_update_on_the_owners_finalizers(box: ClusterBox, api: httpx.Client) -> None:
    owner = api.post(DEPLOY, json=deployment("web")).json()
    _grant(api, "cm", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]}])
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": owner["metadata"]["uid"],
           "controller": True, "blockOwnerDeletion": True}
    with box.client(box.token_for("default", "operator")) as sa:
        r = sa.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "a", "ownerReferences": [ref]}})
        assert r.status_code == 403 and "cannot set blockOwnerDeletion" in r.json()["message"]
        plain = {**ref, "blockOwnerDeletion": False}
        assert sa.post("/api/v1/namespaces/default/configmaps",
                       json={"metadata": {"name": "b", "ownerReferences": [plain]}}).status_code == 201
        _grant(api, "fin", [{"apiGroups": ["apps"], "resources": ["deployments/finalizers"], "verbs": ["update"]}])
        assert sa.post("/api/v1/namespaces/default/configmaps",
                       json={"metadata": {"name": "a", "ownerReferences": [ref]}}).status_code == 201


def test_a_role_binding_grants_a_cluster_role_only_in_its_namespace(box: ClusterBox, api: httpx.Client) -> None:
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]
    assert api.post(f"{RBAC}/clusterroles", json={"metadata": {"name": "cm-reader"}, "rules": rules}).status_code == 201
    assert api.post(f"{RBAC}/namespaces/default/rolebindings", json={
        "metadata": {"name": "cm-reader"}, "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": "default"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cm-reader"}}).status_code == 201
    with box.client(box.token_for("default", "operator")) as sa:
        assert sa.get("/api/v1/namespaces/default/configmaps").status_code == 200
        assert sa.get("/api/v1/namespaces/kube-system/configmaps").status_code == 403
        assert sa.get("/api/v1/configmaps").status_code == 403


def test_an_apply_that_creates_needs_create_as_well_as_patch(box: ClusterBox, api: httpx.Client) -> None:
    import yaml
    _grant(api, "patch-only", [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["patch", "get"]}])
    body = yaml.safe_dump(deployment("web"))
    apply = {"Content-Type": "application/apply-patch+yaml"}
    with box.client(box.token_for("default", "operator")) as sa:
        r = sa.patch(f"{DEPLOY}/web", content=body, headers=apply, params={"fieldManager": "infernetes"})
        assert r.status_code == 403 and 'cannot create resource "deployments"' in r.json()["message"]
        api.post(DEPLOY, json=deployment("web"))
        assert sa.patch(f"{DEPLOY}/web", content=body, headers=apply, params={"fieldManager": "infernetes"}).status_code == 200


def test_kubectl_auth_can_i_answers_from_the_stored_rules(box: ClusterBox, api: httpx.Client, tmp_path: Any) -> None:
    import subprocess
    from .conftest import KUBECTL
    _grant(api, "read", [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["list"]}])
    config = box.write_kubeconfig(tmp_path / "kubeconfig", token=box.token_for("default", "operator"))

    def can_i(*args: str) -> str:
        return subprocess.run([KUBECTL, "--kubeconfig", str(config), "auth", "can-i", *args],
                              capture_output=True, text=True, timeout=60).stdout.strip()
    assert can_i("list", "deployments") == "yes"
    assert can_i("delete", "deployments") == "no"
    assert can_i("list", "deployments", "-n", "kube-system") == "no"
