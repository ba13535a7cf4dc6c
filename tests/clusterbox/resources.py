"""The kinds the box serves: a table of the built-in resources issue 11 names, and CRDs turned
into resources when they are created through the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .schema import Node, builtin_def_for, crd_root


@dataclass(frozen=True)
class Scale:
    spec_path: str  # ".spec.replicas"
    status_path: str
    selector_path: str | None


@dataclass
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status: bool = False
    scale: Scale | None = None
    crd_schema: dict[str, Any] | None = None  # the CRD's openAPIV3Schema
    crd_name: str | None = None
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    # Field selectors the real server supports for this kind, beyond metadata.name/namespace.
    field_labels: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def group_resource(self) -> str:
        """How error messages name it: `deployments.apps`, `pods`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def is_crd(self) -> bool:
        return self.crd_schema is not None

    def node(self) -> Node:
        if self.crd_schema is not None:
            return crd_root(self.crd_schema)
        name = builtin_def_for(self.group, self.version, self.kind)
        return Node.builtin(name) if name else Node(None)

    @property
    def tracks_generation(self) -> bool:
        """Kinds whose strategy keeps metadata.generation (ConfigMaps, Secrets, Services... have none)."""
        return self.is_crd or (self.group, self.kind) in _GENERATION


_GENERATION = {("apps", "Deployment"), ("apps", "ReplicaSet"), ("policy", "PodDisruptionBudget"),
               ("networking.k8s.io", "NetworkPolicy"), ("autoscaling", "HorizontalPodAutoscaler"),
               ("apiextensions.k8s.io", "CustomResourceDefinition")}


def _r(group: str, version: str, plural: str, kind: str, namespaced: bool = True, **kw: Any) -> Resource:
    kw.setdefault("singular", kind.lower())
    return Resource(group, version, plural, kind, namespaced, **kw)


_REPLICAS = Scale(".spec.replicas", ".status.replicas", ".status.selector")

BUILTIN: list[Resource] = [
    _r("", "v1", "namespaces", "Namespace", False, short_names=("ns",), status=True, field_labels=("status.phase",)),
    _r("", "v1", "pods", "Pod", short_names=("po",), categories=("all",), status=True,
       field_labels=("status.phase", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                     "spec.serviceAccountName", "status.podIP", "status.nominatedNodeName", "spec.hostNetwork")),
    _r("", "v1", "nodes", "Node", False, short_names=("no",), status=True, field_labels=("spec.unschedulable",)),
    _r("", "v1", "services", "Service", short_names=("svc",), categories=("all",), status=True),
    _r("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _r("", "v1", "secrets", "Secret", field_labels=("type",)),
    _r("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _r("", "v1", "events", "Event", short_names=("ev",),
       field_labels=("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                     "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                     "reason", "reportingComponent", "source", "type")),
    _r("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",), status=True),
    _r("apps", "v1", "deployments", "Deployment", short_names=("deploy",), categories=("all",), status=True, scale=_REPLICAS),
    _r("apps", "v1", "replicasets", "ReplicaSet", short_names=("rs",), categories=("all",), status=True, scale=_REPLICAS,
       field_labels=("status.replicas",)),
    _r("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    _r("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _r("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _r("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _r("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _r("coordination.k8s.io", "v1", "leases", "Lease"),
    _r("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short_names=("pdb",), status=True),
    _r("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",)),
    _r("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", short_names=("hpa",),
       categories=("all",), status=True),
    _r("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
       short_names=("crd", "crds"), status=True),
    # Not stored: a create answers whether the caller may do something (`kubectl auth can-i`).
    _r("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False),
]
REVIEWS = ("authorization.k8s.io", "selfsubjectaccessreviews")


def from_crd(crd: dict[str, Any]) -> list[Resource]:
    """One Resource per served version of a CRD."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for v in spec.get("versions", ()):
        if not v.get("served", True):
            continue
        sub = v.get("subresources") or {}
        scale = sub.get("scale")
        out.append(Resource(
            spec["group"], v["name"], names["plural"], names["kind"], spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular", names["kind"].lower()), short_names=tuple(names.get("shortNames", ())),
            categories=tuple(names.get("categories", ())), status="status" in sub,
            scale=Scale(scale["specReplicasPath"], scale["statusReplicasPath"], scale.get("labelSelectorPath")) if scale else None,
            crd_schema=(v.get("schema") or {}).get("openAPIV3Schema") or {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            crd_name=crd["metadata"]["name"], printer_columns=list(v.get("additionalPrinterColumns", ()))))
    return out
