"""Elasticsearch's ``filter_path`` response filtering (``endpoints.inference_id``, ``**.state``, ``-nodes``).

The patterns are compiled into a small automaton walked once over the document: a state is
(pattern, position), the states for a key are computed from its parent's, and a set of states
never holds the same (pattern, position) twice. So the work is bounded by the number of keys in
the document times the number of pattern segments, whatever the patterns are: ``**.**.**...``
used to multiply the work by two for every ``**`` (and froze the gateway for 97 s with 40 of them).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

_DROP = object()
State = tuple[int, int]  # (pattern index, position of the next segment to match)


def _matcher(segment: str) -> Callable[[str], bool] | None:
    """None for ``**``; otherwise a test of one key against the segment (``*`` wildcards, as fnmatch)."""
    if segment == "**":
        return None
    if not any(c in segment for c in "*?["):
        return segment.__eq__
    return re.compile(fnmatch.translate(segment)).match  # type: ignore[return-value]


class PathFilter:
    """Compiled include or exclude patterns; ``steps`` counts the (state, key) pairs visited."""

    def __init__(self, patterns: list[list[str]]) -> None:
        compiled: list[tuple[str, ...]] = []
        for p in patterns:
            collapsed: list[str] = []
            for seg in p:
                if seg == "**" and collapsed and collapsed[-1] == "**":
                    continue  # ** matches any number of levels: two in a row match what one does
                collapsed.append(seg)
            if tuple(collapsed) not in compiled:
                compiled.append(tuple(collapsed))
        self.paths = compiled
        cache: dict[str, Callable[[str], bool] | None] = {}
        for seg in {s for p in compiled for s in p}:
            cache[seg] = _matcher(seg)
        self.matchers = [[cache[s] for s in p] for p in compiled]
        self.steps = 0
        self.start = self._closure({(i, 0) for i in range(len(compiled))})

    def _closure(self, states: set[State]) -> frozenset[State]:
        # A ** followed by more segments may also match zero levels: the segment after it is tried on the
        # same key. Runs of ** were collapsed, so one look ahead is enough.
        out = set(states)
        for p, i in states:
            if self.paths[p][i] == "**" and i + 1 < len(self.paths[p]):
                out.add((p, i + 1))
        return frozenset(out)

    def advance(self, states: frozenset[State], key: str) -> tuple[bool, frozenset[State]]:
        """(the whole subtree under ``key`` matched, the states for the value under ``key``)."""
        full = False
        nxt: set[State] = set()
        for p, i in states:
            self.steps += 1
            last = i == len(self.paths[p]) - 1
            match = self.matchers[p][i]
            if match is None:
                nxt.add((p, i))  # ** swallows this level
                full |= last
            elif match(key):
                if last:
                    full = True
                else:
                    nxt.add((p, i + 1))
        return full, self._closure(nxt)

    def include(self, node: Any, states: frozenset[State] | None = None) -> Any:
        states = self.start if states is None else states
        if isinstance(node, list):
            kept = [x for x in (self.include(v, states) for v in node) if x is not _DROP]
            return kept if kept else _DROP
        if not isinstance(node, dict):
            return _DROP
        out = {}
        for key, value in node.items():
            full, rest = self.advance(states, key)
            if full:
                out[key] = value
            elif rest:
                sub = self.include(value, rest)
                if sub is not _DROP:
                    out[key] = sub
        return out if out else _DROP

    def exclude(self, node: Any, states: frozenset[State] | None = None) -> Any:
        states = self.start if states is None else states
        if isinstance(node, list):
            return [self.exclude(v, states) for v in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            full, rest = self.advance(states, key)
            if not full:
                out[key] = self.exclude(value, rest) if rest else value
        return out


def _paths(spec: str, exclude: bool) -> list[list[str]]:
    out = []
    for raw in spec.split(","):
        raw = raw.strip()
        if raw and raw.startswith("-") == exclude:
            out.append(raw.lstrip("-").split("."))
    return out


def compile_filter(spec: str) -> tuple[PathFilter | None, PathFilter | None]:
    includes, excludes = _paths(spec, False), _paths(spec, True)
    return (PathFilter(includes) if includes else None, PathFilter(excludes) if excludes else None)


def filter_path(data: Any, spec: str | None, *, filters: tuple[PathFilter | None, PathFilter | None] | None = None
                ) -> Any:
    """Keep what the include patterns name, then drop what the ``-`` patterns name."""
    if not spec:
        return data
    include, exclude = filters if filters is not None else compile_filter(spec)
    if include is not None:
        data = include.include(data)
        if data is _DROP:
            data = {}
    if exclude is not None:
        data = exclude.exclude(data)
    return data
