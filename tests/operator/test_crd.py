"""The CRDs: generated from the spec models, valid apiextensions/v1 objects with structural schemas,
and in agreement with pydantic on every documented and every invalid example."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml
from crdcheck import structural_problems, validate
from es_examples import DOCUMENTED_BODIES, INVALID_BODIES

from infernetes.operator.errors import InfernetesError
from infernetes.operator.kube.crd import CRDS, deployment_crd, endpoint_crd, render
from infernetes.operator.kube.names import k8s_name
from infernetes.operator.spec import DeploymentResourceSpec, parse_endpoint

ROOT = Path(__file__).resolve().parents[2]
# Cases whose rule needs the model store, other endpoints, or a REST-only detail.
NOT_FOR_CRD = {"model-task-mismatch", "unknown-model", "unknown-deployment", "body-not-an-object"}


def resource(task: str, inference_id: str, body: dict) -> dict:
    name = k8s_name(inference_id)
    spec = {**body, "task_type": task}
    if name != inference_id:
        spec["inference_id"] = inference_id
    return {"apiVersion": "infernetes.dev/v1alpha1", "kind": "InferenceEndpoint",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


@pytest.mark.parametrize("filename", sorted(CRDS))
def test_committed_crds_are_generated(filename):
    assert (ROOT / "crds" / filename).read_text() == render(CRDS[filename]()), \
        "crds/ is stale: run `.venv/bin/infernetes crd --out-dir crds`"


@pytest.mark.parametrize("build", [endpoint_crd, deployment_crd])
def test_crds_are_valid_and_structural(build):
    crd = build()
    kubernetes_validate.validate(crd, "1.37", strict=True)
    version = crd["spec"]["versions"][0]
    assert structural_problems(version["schema"]["openAPIV3Schema"]) == []
    assert version["subresources"]["status"] == {}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[-1] == "Age" and "State" in names and "Allocations" in names


def test_printer_columns_and_scale_of_endpoints():
    version = endpoint_crd()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Task", "Model", "Allocations", "State", "Age"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.service_settings.num_allocations"
    assert endpoint_crd()["spec"]["names"]["shortNames"] == ["ie"]


def test_descriptions_teach_the_fields():
    spec = endpoint_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    settings = spec["properties"]["service_settings"]["properties"]
    assert "power of 2" in settings["num_threads"]["description"]
    assert all("description" in settings[f] for f in settings)


@pytest.mark.parametrize(("task", "inference_id", "body"), DOCUMENTED_BODIES, ids=[b[1] for b in DOCUMENTED_BODIES])
def test_documented_examples_are_accepted_by_both(task, inference_id, body):
    parse_endpoint(task, inference_id, body)
    assert validate(endpoint_crd(), resource(task, inference_id, body)) == []


@pytest.mark.parametrize(
    ("case", "task", "inference_id", "body"),
    [c[:4] for c in INVALID_BODIES if c[0] not in NOT_FOR_CRD],
    ids=[c[0] for c in INVALID_BODIES if c[0] not in NOT_FOR_CRD],
)
def test_invalid_examples_are_rejected_by_both(case, task, inference_id, body):
    with pytest.raises(InfernetesError):
        parse_endpoint(task, inference_id, body)
    errors = validate(endpoint_crd(), resource(task, inference_id, body))
    assert errors, f"the CRD accepted {case}"


def test_num_threads_cannot_be_updated():
    old = resource(*DOCUMENTED_BODIES[2])
    new = resource(*DOCUMENTED_BODIES[2])
    new["spec"]["service_settings"] = {**new["spec"]["service_settings"], "num_threads": 2}
    assert any("[num_threads] cannot be updated" in e for e in validate(endpoint_crd(), new, old))
    scaled = resource(*DOCUMENTED_BODIES[2])
    scaled["spec"]["service_settings"] = {**scaled["spec"]["service_settings"], "num_allocations": 3}
    assert validate(endpoint_crd(), scaled, old) == []
    retyped = resource(*DOCUMENTED_BODIES[2])
    retyped["spec"]["task_type"] = "sparse_embedding"
    assert any("[task_type] cannot be updated" in e for e in validate(endpoint_crd(), retyped, old))


@pytest.mark.parametrize(("spec", "ok"), [
    ({"model_id": ".elser_model_2", "number_of_allocations": 2}, True),
    ({"model_id": ".elser_model_2", "threads_per_allocation": 4,
      "adaptive_allocations": {"enabled": True, "max_number_of_allocations": 3}}, True),
    ({"model_id": ".elser_model_2", "threads_per_allocation": 3}, False),
    ({"model_id": ".elser_model_2", "number_of_allocations": 2, "adaptive_allocations": {"enabled": True}}, False),
    ({"model_id": ".elser_model_2", "priority": "urgent"}, False),
    ({"number_of_allocations": 2}, False),
    ({"model_id": "x", "stray": 1}, False),
])
def test_model_deployments_agree(spec, ok):
    crd_ok = validate(deployment_crd(), {"metadata": {"name": "d"}, "spec": spec}) == []
    try:
        DeploymentResourceSpec.model_validate(spec)
        pydantic_ok = True
    except pydantic.ValidationError:  # a refusal; any other exception is a crash and fails the test
        pydantic_ok = False
    assert crd_ok == pydantic_ok == ok


def test_crd_files_parse_as_yaml():
    for filename in CRDS:
        assert yaml.safe_load((ROOT / "crds" / filename).read_text())["kind"] == "CustomResourceDefinition"
