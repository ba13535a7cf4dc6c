"""Elasticsearch's ``filter_path`` response filtering (``endpoints.inference_id``, ``**.state``, ``-nodes``)."""

from __future__ import annotations

import fnmatch
from typing import Any

_DROP = object()


def _paths(spec: str, exclude: bool) -> list[list[str]]:
    out = []
    for raw in spec.split(","):
        raw = raw.strip()
        if raw and raw.startswith("-") == exclude:
            out.append(raw.lstrip("-").split("."))
    return out


def _advance(paths: list[list[str]], key: str) -> tuple[bool, list[list[str]]]:
    """(whole subtree matched, remaining paths for the value under ``key``)."""
    full, rest = False, []
    for p in paths:
        head = p[0]
        if head == "**":
            rest.append(p)  # ** may swallow this level
            if len(p) > 1:
                f, r = _advance([p[1:]], key)
                full |= f
                rest += r
            else:
                full = True
        elif fnmatch.fnmatchcase(key, head):
            if len(p) == 1:
                full = True
            else:
                rest.append(p[1:])
    return full, rest


def _include(node: Any, paths: list[list[str]]) -> Any:
    if isinstance(node, list):
        kept = [x for x in (_include(v, paths) for v in node) if x is not _DROP]
        return kept if kept else _DROP
    if not isinstance(node, dict):
        return _DROP
    out = {}
    for key, value in node.items():
        full, rest = _advance(paths, key)
        if full:
            out[key] = value
        elif rest:
            sub = _include(value, rest)
            if sub is not _DROP:
                out[key] = sub
    return out if out else _DROP


def _exclude(node: Any, paths: list[list[str]]) -> Any:
    if isinstance(node, list):
        return [_exclude(v, paths) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        full, rest = _advance(paths, key)
        if not full:
            out[key] = _exclude(value, rest) if rest else value
    return out


def filter_path(data: Any, spec: str | None) -> Any:
    if not spec:
        return data
    includes, excludes = _paths(spec, False), _paths(spec, True)
    if includes:
        data = _include(data, includes)
        if data is _DROP:
            data = {}
    if excludes:
        data = _exclude(data, excludes)
    return data
