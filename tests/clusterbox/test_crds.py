"""The project's real CRDs (crds/) served by the box: created through the API, then validation,
defaulting, pruning, CEL rules with transition rules, and the status and scale subresources."""

from __future__ import annotations

import copy
from typing import Any

import httpx

from clusterbox.fixtures import crd_docs

IE = "/apis/infernetes.dev/v1alpha1/namespaces/default/inferenceendpoints"
MD = "/apis/infernetes.dev/v1alpha1/namespaces/default/modeldeployments"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
MERGE = {"Content-Type": "application/merge-patch+json"}


def endpoint(name: str, **settings: Any) -> dict[str, Any]:
    return {"apiVersion": "infernetes.dev/v1alpha1", "kind": "InferenceEndpoint", "metadata": {"name": name},
            "spec": {"task_type": "text_embedding", "service": "elasticsearch",
                     "service_settings": {"model_id": ".multilingual-e5-small", "num_allocations": 1, "num_threads": 1, **settings}}}


def test_a_crd_created_through_the_api_appears_in_discovery_and_goes_with_it(api: httpx.Client) -> None:
    assert api.get("/apis/infernetes.dev/v1alpha1").status_code == 404
    doc = crd_docs()[0]
    created = api.post(CRDS, json=doc).json()
    assert {c["type"]: c["status"] for c in created["status"]["conditions"]} == {"NamesAccepted": "True", "Established": "True"}
    names = {r["name"] for r in api.get("/apis/infernetes.dev/v1alpha1").json()["resources"]}
    assert {"inferenceendpoints", "inferenceendpoints/status", "inferenceendpoints/scale"} <= names
    assert "infernetes.dev" in {g["name"] for g in api.get("/apis").json()["groups"]}
    assert "apis/infernetes.dev/v1alpha1" in api.get("/openapi/v3").json()["paths"]
    assert api.post(IE, json=endpoint("e")).status_code == 201
    assert api.delete(f"{CRDS}/{doc['metadata']['name']}").status_code == 200
    assert api.get("/apis/infernetes.dev/v1alpha1").status_code == 404
    assert api.get(IE).status_code == 404


def _cause(r: httpx.Response) -> list[tuple[str, str]]:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["kind"] == "Status" and body["reason"] == "Invalid"
    return [(c["field"], c["message"]) for c in body["details"]["causes"]]


def test_schema_validation_refuses_bad_types_enums_bounds_and_missing_fields(api: httpx.Client, crds: Any) -> None:
    bad_type = endpoint("e", num_allocations="two")
    assert _cause(api.post(IE, json=bad_type))[0][0] == "spec.service_settings.num_allocations"
    bad_enum = endpoint("e")
    bad_enum["spec"]["task_type"] = "translation"
    assert "supported values" in _cause(api.post(IE, json=bad_enum))[0][1]
    below = endpoint("e", num_allocations=0)
    assert "greater than or equal to 1" in _cause(api.post(IE, json=below))[0][1]
    missing = endpoint("e")
    del missing["spec"]["service"]
    assert _cause(api.post(IE, json=missing)) == [("spec.service", "Required value")]
    assert api.get(f"{IE}/e").status_code == 404, "a refused write stores nothing"


def test_cel_rules_refuse_and_name_the_message(api: httpx.Client, crds: Any) -> None:
    r = api.post(IE, json=endpoint("e", num_threads=3))
    assert _cause(r) == [("spec.service_settings", 'Invalid value: "object": [num_threads] must be a power of 2 less than or equal to 32')]
    assert "[num_threads] must be a power of 2" in r.json()["message"]
    both = endpoint("e", adaptive_allocations={"enabled": True, "min_number_of_allocations": 3, "max_number_of_allocations": 2})
    messages = [m for _, m in _cause(api.post(IE, json=both))]
    assert any("[max_number_of_allocations] must be greater" in m for m in messages)
    same_id = endpoint(".multilingual-e5-small")
    same_id["metadata"]["name"] = "e5"
    same_id["spec"]["service_settings"]["model_id"] = "e5"
    assert "must not match the model ID" in _cause(api.post(IE, json=same_id))[0][1]


def test_transition_rules_compare_with_the_stored_object(api: httpx.Client, crds: Any) -> None:
    created = api.post(IE, json=endpoint("e")).json()
    changed = copy.deepcopy(created)
    changed["spec"]["task_type"] = "sparse_embedding"
    r = api.put(f"{IE}/e", json=changed)
    assert ("spec", 'Invalid value: "object": [task_type] cannot be updated') in _cause(r)
    threads = api.patch(f"{IE}/e", json={"spec": {"service_settings": {"num_threads": 2}}}, headers=MERGE)
    assert any("[num_threads] cannot be updated" in m for _, m in _cause(threads))
    ok = api.patch(f"{IE}/e", json={"spec": {"service_settings": {"num_allocations": 2}}}, headers=MERGE)
    assert ok.status_code == 200 and ok.json()["metadata"]["generation"] == 2


def test_defaults_are_applied_and_unknown_fields_pruned(api: httpx.Client, crds: Any) -> None:
    body = {"apiVersion": "infernetes.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
            "spec": {"model_id": "minilm", "surprise": 1, "adaptive_allocations": {"enabled": False, "extra": "x"}}}
    r = api.post(MD, json=body)
    assert r.status_code == 201, r.text
    spec = r.json()["spec"]
    assert spec["threads_per_allocation"] == 1 and spec["priority"] == "normal"
    assert "surprise" not in spec and spec["adaptive_allocations"] == {"enabled": False}
    assert "unknown field" in r.headers.get("Warning", "")
    strict = api.post(MD, json={**body, "metadata": {"name": "m2"}}, params={"fieldValidation": "Strict"})
    assert strict.status_code == 400 and 'unknown field "spec.surprise"' in strict.json()["message"]
    # A transition rule on a defaulted field: the stored default is what oldSelf sees.
    change = api.patch(f"{MD}/m", json={"spec": {"threads_per_allocation": 2}}, headers=MERGE)
    assert any("[threads_per_allocation] cannot be updated" in m for _, m in _cause(change))


def test_preserve_unknown_fields_keeps_what_it_declares(api: httpx.Client, crds: Any) -> None:
    api.post(IE, json=endpoint("e"))
    status = {"status": {"state": "started", "autoscaler": {"anything": {"goes": [1, 2]}}, "invented": True}}
    r = api.patch(f"{IE}/e/status", json=status, headers=MERGE)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == {"state": "started", "autoscaler": {"anything": {"goes": [1, 2]}}}


def test_status_subresource_writes_only_status_and_main_writes_never_status(api: httpx.Client, crds: Any) -> None:
    created = api.post(IE, json={**endpoint("e"), "status": {"state": "forged"}}).json()
    assert "status" not in created, "status is dropped on create when the status subresource is on"
    both = copy.deepcopy(created)
    both["spec"]["service_settings"]["num_allocations"] = 4
    both["status"] = {"state": "started"}
    r = api.put(f"{IE}/e/status", json=both).json()
    assert r["status"] == {"state": "started"} and r["spec"]["service_settings"]["num_allocations"] == 1
    assert r["metadata"]["generation"] == 1
    r["spec"]["service_settings"]["num_allocations"] = 4
    r["status"] = {"state": "failed"}
    main = api.put(f"{IE}/e", json=r).json()
    assert main["status"] == {"state": "started"} and main["spec"]["service_settings"]["num_allocations"] == 4
    assert main["metadata"]["generation"] == 2


def test_scale_subresource_reads_and_writes_the_spec_replicas_path(api: httpx.Client, crds: Any) -> None:
    api.post(IE, json=endpoint("e", num_allocations=2))
    api.patch(f"{IE}/e/status", json={"status": {"allocation_count": 1, "selector": "infernetes.dev/deployment=e"}}, headers=MERGE)
    scale = api.get(f"{IE}/e/scale").json()
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 2} and scale["status"] == {"replicas": 1, "selector": "infernetes.dev/deployment=e"}
    r = api.patch(f"{IE}/e/scale", json={"spec": {"replicas": 3}}, headers=MERGE)
    assert r.status_code == 200 and r.json()["spec"]["replicas"] == 3
    assert api.get(f"{IE}/e").json()["spec"]["service_settings"]["num_allocations"] == 3
    negative = api.patch(f"{IE}/e/scale", json={"spec": {"replicas": -1}}, headers=MERGE)
    assert negative.status_code == 422
    stale = api.put(f"{IE}/e/scale", json={**scale, "spec": {"replicas": 5}})
    assert stale.status_code == 409, "the Scale's resourceVersion is a precondition"
    # The CRD's validation still applies to a write through scale (minimum: 1).
    zero = api.patch(f"{IE}/e/scale", json={"spec": {"replicas": 0}}, headers=MERGE)
    assert zero.status_code == 422


def test_a_crd_that_is_not_structural_or_has_a_bad_cel_rule_is_refused(api: httpx.Client) -> None:
    doc = crd_docs()[0]
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    untyped = copy.deepcopy(doc)
    del untyped["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["task_type"]["type"]
    r = api.post(CRDS, json=untyped)
    assert r.status_code == 422 and "properties[task_type].type" in r.json()["message"]
    bad_rule = copy.deepcopy(doc)
    bad_rule["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] = [{"rule": "self.spec.(", "message": "x"}]
    assert api.post(CRDS, json=bad_rule).status_code == 422
    assert api.get("/apis/infernetes.dev/v1alpha1").status_code == 404, "a refused CRD serves nothing"
    assert schema["type"] == "object" and api.post(CRDS, json=doc).status_code == 201
