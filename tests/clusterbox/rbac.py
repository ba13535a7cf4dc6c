"""RBAC as the API server evaluates it: bearer tokens map to users (an admin in system:masters, or
ServiceAccounts), and the Roles, ClusterRoles and bindings stored in the box decide."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .resources import Resource
    from .server import ApiServer


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]

    @staticmethod
    def service_account(namespace: str, name: str) -> User:
        return User(f"system:serviceaccount:{namespace}:{name}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))


def _rule_allows(rule: dict[str, Any], verb: str, group: str, resource: str, subresource: str | None, name: str | None) -> bool:
    if not any(v in ("*", verb) for v in rule.get("verbs") or ()):
        return False
    if not any(g in ("*", group) for g in rule.get("apiGroups") or ()):
        return False
    full = f"{resource}/{subresource}" if subresource else resource
    if not any(r == "*" or r == full or (subresource and r == f"*/{subresource}") for r in rule.get("resources") or ()):
        return False
    names = rule.get("resourceNames") or ()
    return not names or (name is not None and name in names)


class Authorizer:
    def __init__(self, server: ApiServer):
        self.server = server

    def _subject_matches(self, subject: dict[str, Any], user: User, binding_ns: str | None) -> bool:
        kind = subject.get("kind")
        if kind == "ServiceAccount":
            return user.name == f"system:serviceaccount:{subject.get('namespace') or binding_ns}:{subject.get('name')}"
        if kind == "User":
            return user.name == subject.get("name")
        if kind == "Group":
            return subject.get("name") in user.groups
        return False

    def _role_rules(self, ref: dict[str, Any], namespace: str | None) -> list[dict[str, Any]]:
        if ref.get("kind") == "ClusterRole":
            role = self.server.get(self.server.by_plural("rbac.authorization.k8s.io", "clusterroles"), None, ref.get("name", ""))
        else:
            role = self.server.get(self.server.by_plural("rbac.authorization.k8s.io", "roles"), namespace, ref.get("name", ""))
        return list((role or {}).get("rules") or [])

    def allowed(self, user: User, verb: str, res: Resource, namespace: str | None, name: str | None,
                subresource: str | None) -> bool:
        if "system:masters" in user.groups:
            return True
        s = self.server
        rules: list[dict[str, Any]] = []
        for crb in s.objects[("rbac.authorization.k8s.io", "clusterrolebindings")].values():
            if any(self._subject_matches(sub, user, None) for sub in crb.get("subjects") or ()):
                rules += self._role_rules(crb.get("roleRef") or {}, None)
        if namespace:
            for rb in s.objects[("rbac.authorization.k8s.io", "rolebindings")].values():
                if rb["metadata"].get("namespace") != namespace:
                    continue
                if any(self._subject_matches(sub, user, namespace) for sub in rb.get("subjects") or ()):
                    rules += self._role_rules(rb.get("roleRef") or {}, namespace)
        return any(_rule_allows(r, verb, res.group, res.plural, subresource, name) for r in rules)
