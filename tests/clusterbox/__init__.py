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
blockOwnerDeletion admission, and SelfSubjectAccessReview (`kubectl auth can-i`); watches with bookmarks, resumption, 410 after compaction; injected
faults (429 with Retry-After, 500, slow answers, dropped watch streams); discovery and OpenAPI v3
documents (the real Kubernetes schemas from kubernetes-validate, so `kubectl explain` works) over
TLS with a self-signed CA (kubectl sends tokens only over TLS); server-side printing of custom
resources, so `kubectl get` and `get -w` show the CRDs' printer columns.

The controllers (controllers.py, on unless `ClusterBox(controllers=False)`): Deployment ->
ReplicaSet -> Pods with RollingUpdate (maxSurge/maxUnavailable) and Recreate rollouts,
revisionHistoryLimit, proportional scaling of a Deployment resized mid-rollout, paused
Deployments, Deployment and ReplicaSet status with the Available and Progressing
conditions (ProgressDeadlineExceeded included); one Node (`box-node`, its CPU and memory set by
`ClusterBox(node_cpu=, node_memory=)`) and a scheduler that binds pods whose requests fit and marks
the others Unschedulable; EndpointSlices for Services with a selector, from pod IPs and readiness.

The kubelet (kubelet.py, on with `ClusterBox(kubelet=True)`): the pods bound to `box-node` run as
local processes, each on a loopback address of its own, with init containers, env, volumes as
folders, probes, restarts with back-off, graceful deletion and `kubectl logs`; podsite/
sitecustomize.py stands in for network and mount namespaces in the pods' Python processes. Its
own docstring says what it does not model.

What it does not model: real scheduling (one node; nodeSelector only: no affinity, taints,
preemption or topology spread); adoption of orphaned ReplicaSets and pods; the HPA controller; networking beyond loopback; cgroups and
resource limits; admission webhooks, quotas and
LimitRanges; aggregated discovery (kubectl falls back to the plain documents); server-side printing
of built-in kinds (kubectl prints NAME and AGE only); built-in defaulting (e.g. a Service port's
protocol) and most of the built-in kinds' hand-written validation (the schema's types and required
fields are checked); CRD version conversion and validation ratcheting; protobuf bodies, so the
`kubectl create configmap|secret|deployment ...` generators fail (`kubectl create -f` and `apply`
work; `kubectl auth can-i` works: its one protobuf body is decoded); impersonation (`--as`);
pod exec, attach and port-forward.
"""

from .box import ClusterBox

__all__ = ["ClusterBox"]
