from __future__ import annotations

import pytest

from infernetes.operator.filterpath import filter_path

DOC = {
    "endpoints": [
        {"inference_id": "a", "task_type": "rerank", "service_settings": {"model_id": "m", "num_threads": 1}},
        {"inference_id": "b", "task_type": "text_embedding", "service_settings": {"model_id": "n", "num_threads": 2}},
    ],
    "count": 2,
}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, DOC),
        ("count", {"count": 2}),
        ("endpoints.inference_id", {"endpoints": [{"inference_id": "a"}, {"inference_id": "b"}]}),
        ("endpoints.*.model_id", {"endpoints": [{"service_settings": {"model_id": "m"}},
                                                 {"service_settings": {"model_id": "n"}}]}),
        ("**.num_threads", {"endpoints": [{"service_settings": {"num_threads": 1}},
                                          {"service_settings": {"num_threads": 2}}]}),
        ("count,endpoints.task_type", {"endpoints": [{"task_type": "rerank"}, {"task_type": "text_embedding"}],
                                       "count": 2}),
        ("-endpoints", {"count": 2}),
        ("-endpoints.service_settings", {"endpoints": [{"inference_id": "a", "task_type": "rerank"},
                                                        {"inference_id": "b", "task_type": "text_embedding"}],
                                         "count": 2}),
        ("nothing", {}),
    ],
)
def test_filter_path(spec, expected):
    assert filter_path(DOC, spec) == expected


# -- linear time (issue 13, D1) ------------------------------------------------------------------

import fnmatch  # noqa: E402

from hypothesis import given, settings, strategies as st  # noqa: E402

from infernetes.operator.filterpath import compile_filter  # noqa: E402


def _naive_advance(paths, key):
    """The recursive matcher filter_path used before: right answers, exponential in the number of **."""
    full, rest = False, []
    for p in paths:
        head = p[0]
        if head == "**":
            rest.append(p)
            if len(p) > 1:
                f, r = _naive_advance([p[1:]], key)
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


def _naive_include(node, paths):
    if isinstance(node, list):
        kept = [x for x in (_naive_include(v, paths) for v in node) if x is not None]
        return kept or None
    if not isinstance(node, dict):
        return None
    out = {}
    for key, value in node.items():
        full, rest = _naive_advance(paths, key)
        if full:
            out[key] = value
        elif rest:
            sub = _naive_include(value, rest)
            if sub is not None:
                out[key] = sub
    return out or None


def _naive_exclude(node, paths):
    if isinstance(node, list):
        return [_naive_exclude(v, paths) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        full, rest = _naive_advance(paths, key)
        if not full:
            out[key] = _naive_exclude(value, rest) if rest else value
    return out


def _naive(doc, spec):
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    inc = [p.split(".") for p in parts if not p.startswith("-")]
    exc = [p.lstrip("-").split(".") for p in parts if p.startswith("-")]
    if inc:
        doc = _naive_include(doc, inc)
        if doc is None:
            doc = {}
    if exc:
        doc = _naive_exclude(doc, exc)
    return doc


KEYS = st.sampled_from(["a", "b", "ab", "state", "nodes"])
SEGMENTS = st.sampled_from(["a", "b", "*", "a*", "**", "state", "nodes", "*s"])
DOCS = st.recursive(st.integers(0, 3), lambda inner: st.one_of(
    st.dictionaries(KEYS, inner, max_size=4), st.lists(inner, max_size=3)), max_leaves=25)
PATTERNS = st.lists(SEGMENTS, min_size=1, max_size=6).map(".".join)
SPECS = st.lists(st.tuples(st.booleans(), PATTERNS), min_size=1, max_size=3).map(
    lambda ps: ",".join(("-" if neg else "") + p for neg, p in ps))


@settings(max_examples=300, deadline=None)
@given(doc=DOCS, spec=SPECS)
def test_automaton_agrees_with_the_recursive_definition(doc, spec):
    assert filter_path(doc, spec) == _naive(doc, spec)


def _stats_like(deployments: int) -> dict:
    node = {"routing_state": {"routing_state": "started"}, "inference_count": 1, "number_of_allocations": 1,
            "node": {"allocation-0": {"name": "x", "roles": ["ml"], "attributes": {}}}}
    return {"count": deployments, "trained_model_stats": [
        {"model_id": f"m{i}", "deployment_stats": {"state": "started", "nodes": [node, node],
                                                   "allocation_status": {"state": "started"}}}
        for i in range(deployments)]}


def _keys(node) -> int:
    if isinstance(node, list):
        return sum(_keys(v) for v in node)
    if isinstance(node, dict):
        return len(node) + sum(_keys(v) for v in node.values())
    return 0


def test_many_double_stars_cost_no_more_than_keys_times_segments():
    """The issue's request: 40 ** then a name that matches nothing took 97 s; now it is one walk."""
    doc = _stats_like(20)
    spec = ".".join(["**"] * 40) + ".zz"
    filters = compile_filter(spec)
    assert filter_path(doc, spec, filters=filters) == {}
    include = filters[0]
    assert include is not None
    # collapsed to **.zz: two live states, so at most two steps per key of the document
    assert include.steps <= 2 * _keys(doc), (include.steps, _keys(doc))


@pytest.mark.parametrize("spec", [
    ".".join(["**", "*"] * 30) + ".zz",
    ",".join(".".join(["**", f"a{i}*"] * 5) for i in range(40)),
    "-" + ".".join(["**", "*"] * 30),
])
def test_work_is_bounded_by_keys_times_segments(spec):
    doc = _stats_like(10)
    filters = compile_filter(spec)
    filter_path(doc, spec, filters=filters)
    segments = sum(len(p) for f in filters if f is not None for p in f.paths)
    steps = sum(f.steps for f in filters if f is not None)
    assert steps <= _keys(doc) * segments, (steps, _keys(doc), segments)
