"""Just enough of Kubernetes' protobuf encoding to read a SelfSubjectAccessReview, the one body
kubectl sends only as protobuf that the box needs (`kubectl auth can-i`). Other protobuf bodies
are answered 415."""

from __future__ import annotations

from typing import Any

MAGIC = b"k8s\x00"


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values (ints for varints, bytes for length-delimited)."""
    out: dict[int, list[Any]] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _str(f: dict[int, list[Any]], n: int) -> str:
    return f[n][-1].decode() if n in f else ""


def access_review(body: bytes) -> dict[str, Any]:
    """A protobuf SelfSubjectAccessReview as its JSON form."""
    if not body.startswith(MAGIC):
        raise ValueError("not a Kubernetes protobuf body")
    unknown = fields(body[len(MAGIC):])
    type_meta = fields(unknown[1][-1]) if 1 in unknown else {}
    if (_str(type_meta, 1), _str(type_meta, 2)) != ("authorization.k8s.io/v1", "SelfSubjectAccessReview"):
        raise ValueError("not a SelfSubjectAccessReview")
    review = fields(unknown[2][-1]) if 2 in unknown else {}
    spec = fields(review[2][-1]) if 2 in review else {}
    out: dict[str, Any] = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {}, "spec": {}}
    if 1 in spec:
        a = fields(spec[1][-1])
        names = {1: "namespace", 2: "verb", 3: "group", 4: "version", 5: "resource", 6: "subresource", 7: "name"}
        out["spec"]["resourceAttributes"] = {k: _str(a, n) for n, k in names.items() if n in a}
    if 2 in spec:
        a = fields(spec[2][-1])
        out["spec"]["nonResourceAttributes"] = {"path": _str(a, 1), "verb": _str(a, 2)}
    return out
