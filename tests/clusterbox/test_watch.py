"""Watches (events, bookmarks, resumption, 410 after compaction, dropped streams) and the faults
the tests inject: 429 with Retry-After, 500, slow answers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from clusterbox import ClusterBox

CM = "/api/v1/namespaces/default/configmaps"


@contextmanager
def watch(box: ClusterBox, path: str, **params: Any) -> Iterator[Iterator[dict[str, Any]]]:
    """The events of a watch, one by one; a read that takes longer than 5 s fails the test."""
    with box.client() as c, c.stream("GET", path, params={"watch": "true", **params},
                                      timeout=httpx.Timeout(30, read=5)) as r:
        assert r.status_code == 200, r.read()
        yield (json.loads(line) for line in r.iter_lines() if line)


def test_watch_sends_changes_after_the_resource_version_it_starts_from(box: ClusterBox, api: httpx.Client) -> None:
    api.post(CM, json={"metadata": {"name": "before", "labels": {"w": "1"}}})
    rv = api.get(CM).json()["metadata"]["resourceVersion"]
    with watch(box, CM, resourceVersion=rv, labelSelector="w=1") as events:
        api.post(CM, json={"metadata": {"name": "a", "labels": {"w": "1"}}})
        api.post(CM, json={"metadata": {"name": "ignored"}})
        api.patch(f"{CM}/a", json={"data": {"k": "v"}}, headers={"Content-Type": "application/merge-patch+json"})
        api.patch(f"{CM}/a", json={"metadata": {"labels": {"w": "0"}}}, headers={"Content-Type": "application/merge-patch+json"})
        seen = [(e["type"], e["object"]["metadata"]["name"]) for e in (next(events) for _ in range(3))]
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")], "leaving the selector is a DELETED for the watcher"


def test_watch_without_a_resource_version_starts_with_the_current_state(box: ClusterBox, api: httpx.Client) -> None:
    for name in ("b", "a"):
        api.post(CM, json={"metadata": {"name": name}})
    with watch(box, CM) as events:
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in (next(events), next(events))] == [("ADDED", "a"), ("ADDED", "b")]


def test_bookmarks_carry_the_current_resource_version(box: ClusterBox, api: httpx.Client) -> None:
    rv = api.get(CM).json()["metadata"]["resourceVersion"]
    with watch(box, CM, resourceVersion=rv, allowWatchBookmarks="true") as events:
        api.post(CM, json={"metadata": {"name": "a"}})
        first = next(events)
        deadline = time.monotonic() + 5
        while (bookmark := next(events))["type"] != "BOOKMARK":
            assert time.monotonic() < deadline, "no bookmark within 5 s (the box sends one every 0.3 s)"
    assert first["type"] == "ADDED"
    assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(first["object"]["metadata"]["resourceVersion"])
    with watch(box, CM, resourceVersion=rv) as events:
        api.post(CM, json={"metadata": {"name": "b"}})
        assert [next(events)["type"] for _ in range(2)] == ["ADDED", "ADDED"], "no bookmarks unless asked for"


def test_resuming_from_a_compacted_resource_version_is_410_gone(box: ClusterBox, api: httpx.Client) -> None:
    old_rv = api.post(CM, json={"metadata": {"name": "a"}}).json()["metadata"]["resourceVersion"]
    api.post(CM, json={"metadata": {"name": "b"}})
    with watch(box, CM, resourceVersion=old_rv) as events:
        assert next(events)["object"]["metadata"]["name"] == "b", "resumable before compaction"
    box.compact()
    with watch(box, CM, resourceVersion=old_rv) as events:
        error = next(events)
        assert error["type"] == "ERROR" and error["object"]["code"] == 410 and error["object"]["reason"] == "Expired"
        assert next(events, None) is None, "the stream ends after the error"
    page = api.get(CM, params={"limit": 1}).json()
    api.post(CM, json={"metadata": {"name": "c"}})
    box.compact()
    expired = api.get(CM, params={"limit": 1, "continue": page["metadata"]["continue"]})
    assert expired.status_code == 410 and expired.json()["reason"] == "Expired"


def test_dropped_watch_streams_end_and_a_new_watch_resumes(box: ClusterBox, api: httpx.Client) -> None:
    rv = api.get(CM).json()["metadata"]["resourceVersion"]
    with watch(box, CM, resourceVersion=rv) as events:
        api.post(CM, json={"metadata": {"name": "a"}})
        last = next(events)["object"]["metadata"]["resourceVersion"]
        deadline = time.monotonic() + 5
        while box.faults.drop_watches("configmaps") == 0:
            assert time.monotonic() < deadline
        assert next(events, None) is None
    api.post(CM, json={"metadata": {"name": "b"}})
    with watch(box, CM, resourceVersion=last) as events:
        assert next(events)["object"]["metadata"]["name"] == "b"


def test_injected_429_carries_retry_after_then_requests_succeed(box: ClusterBox, api: httpx.Client) -> None:
    box.faults.inject("429", count=2, resource="configmaps", retry_after=3)
    for _ in range(2):
        r = api.get(CM)
        assert r.status_code == 429 and r.headers["Retry-After"] == "3"
        assert r.json()["reason"] == "TooManyRequests" and r.json()["details"]["retryAfterSeconds"] == 3
    assert api.get(CM).status_code == 200
    assert api.get("/api/v1/namespaces/default/secrets").status_code == 200


def test_injected_500s_and_slow_answers_for_one_verb(box: ClusterBox, api: httpx.Client) -> None:
    box.faults.inject("500", count=1, resource="configmaps", verb="create")
    assert api.get(CM).status_code == 200, "a fault for creates leaves reads alone"
    r = api.post(CM, json={"metadata": {"name": "a"}})
    assert r.status_code == 500 and r.json()["reason"] == "InternalError"
    assert api.get(f"{CM}/a").status_code == 404, "the failed create stored nothing"
    box.faults.inject("slow", count=1, resource="configmaps", delay=0.5)
    start = time.monotonic()
    assert api.get(CM).status_code == 200
    assert time.monotonic() - start >= 0.5
    start = time.monotonic()
    api.get(CM)
    assert time.monotonic() - start < 0.5, "only the next N requests are slow"


def test_watch_timeout_seconds_ends_the_stream(box: ClusterBox, api: httpx.Client) -> None:
    start = time.monotonic()
    with watch(box, CM, timeoutSeconds="1", resourceVersion=api.get(CM).json()["metadata"]["resourceVersion"]) as events:
        assert next(events, None) is None
    assert 0.9 <= time.monotonic() - start < 5
