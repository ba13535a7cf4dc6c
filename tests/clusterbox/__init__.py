"""A cluster in a box: a Kubernetes API server for tests, faithful where Infernetes depends on it.

README draft (the lead moves this into README's Kubernetes section)
-------------------------------------------------------------------
No kube-apiserver, kind or Docker engine exists on the development machines, so the tests run
against a cluster in a box: ``make cluster`` starts it by hand and prints a kubeconfig, and the
real ``kubectl`` (``apply``, ``apply --server-side``, ``get``, ``describe``, ``scale``, ``wait``,
``delete``) works against it::

    make cluster                      # prints: export KUBECONFIG=/tmp/clusterbox-.../kubeconfig
    kubectl apply -f crds/
    kubectl apply -f examples/endpoints/03-e5.yaml
    kubectl get inferenceendpoints

What it models (the API server): the kinds Infernetes uses (Namespaces, Pods, Services, ConfigMaps,
Secrets, ServiceAccounts, Events, PVCs, Deployments, ReplicaSets, EndpointSlices, RBAC kinds, Leases,
PodDisruptionBudgets, NetworkPolicies, HPAs, CustomResourceDefinitions and the custom resources they
define); lists sorted by namespace/name with label and field selectors and limit/continue; uid,
creationTimestamp and resourceVersion on every write, 409 on a stale resourceVersion, no-op writes
that change nothing; generation bumped by changes outside metadata and status; merge patch, JSON
patch, strategic merge patch (merge keys from the real 1.32 schemas) and server-side apply with
managedFields, conflicts and removal of fields a manager stops applying; CRDs created through the
API, with structural validation, defaulting, pruning, CEL rules (transition rules included) and
the status and scale subresources; finalizers and deletionTimestamp, owner-reference garbage
collection (background, foreground, orphan) and namespace deletion; RBAC from the stored Roles,
ClusterRoles and bindings, with bearer tokens for an admin and for ServiceAccounts, and OpenShift's
blockOwnerDeletion admission; watches with bookmarks, resumption, 410 after compaction; injected
faults (429 with Retry-After, 500, slow answers, dropped watch streams); discovery and OpenAPI v3
documents (the real Kubernetes schemas from kubernetes-validate) over TLS with a self-signed CA.

What it does not model: controllers and the kubelet are not written yet (nothing creates
ReplicaSets or Pods from a Deployment, no pod runs, no Deployment status); networking beyond
loopback; real scheduling, nodes, cgroups and resource limits; admission webhooks, quotas and
LimitRanges; aggregated discovery and server-side Table printing (kubectl falls back to client-side
printing, so custom printer columns are not shown); built-in defaulting (e.g. a Service port's
protocol); CRD versions conversion and validation ratcheting; protobuf.
"""

from .box import ClusterBox

__all__ = ["ClusterBox"]
