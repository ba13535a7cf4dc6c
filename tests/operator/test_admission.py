"""Admission against capacity (issue 13, D3): pure rules, and what a client sees from the embedded server."""

from __future__ import annotations

import pytest

from infernetes.operator.capacity import Capacity, demand
from infernetes.operator.errors import CapacityExceeded
from infernetes.operator.records import Deployment


def dep(name: str, allocations: int | None = 1, threads: int = 1, adaptive: dict | None = None) -> Deployment:
    return Deployment(deployment_id=name, model_id="m", task_type="text_embedding", num_threads=threads,
                      num_allocations=None if adaptive else allocations, adaptive=adaptive)


@pytest.mark.parametrize(("processors", "others", "new", "fits"), [
    (2, [], dep("a", 2), True),
    (2, [], dep("a", 3), False),  # one deployment: at most the processors
    (2, [], dep("a", 1, threads=2), True),
    (2, [], dep("a", 2, threads=2), False),
    (2, [], dep("a", 64), False),  # the issue: 64 allocations on 2 cores were accepted
    (2, [], dep("a", 100_000), False),
    (2, [dep("b", 2)] * 3, dep("a", 2), True),  # 8 = 4 x 2 in all (overcommit 4 here)
    (2, [dep("b", 2), dep("c", 2), dep("d", 2)], dep("a", 2), True),
    (2, [dep("b", 2), dep("c", 2), dep("d", 2), dep("e", 1)], dep("a", 2), False),
    (2, [dep("a", 2)], dep("a", 2), True),  # an update replaces its own demand
    (2, [], dep("a", adaptive={"enabled": True, "min_number_of_allocations": 0, "max_number_of_allocations": 64}),
     True),  # admitted on its minimum; the max is capped at run time
    (2, [], dep("a", adaptive={"enabled": True, "min_number_of_allocations": 3}), False),
])
def test_admission(processors, others, new, fits):
    capacity = Capacity(processors, overcommit=4)
    others = [d if d.deployment_id != "b" else d.with_(deployment_id=f"b{i}") for i, d in enumerate(others)]
    if fits:
        capacity.admit(new, others)
    else:
        with pytest.raises(CapacityExceeded) as info:
            capacity.admit(new, others)
        assert info.value.status == 429
        assert "fit" in info.value.reason and "--max-allocated-processors" in info.value.reason


def test_the_default_overcommit_bounds_many_small_deployments():
    capacity = Capacity(2)
    many = [dep(f"d{i}") for i in range(32)]
    capacity.admit(dep("a"), many[:31])
    with pytest.raises(CapacityExceeded):
        capacity.admit(dep("a"), many)


def test_the_refusal_says_what_fits():
    with pytest.raises(CapacityExceeded) as info:
        Capacity(4, overcommit=4).admit(dep("a", 3, threads=2), [dep("b", 1, threads=2)])
    assert "3 x 2 = 6 processors" in info.value.reason
    assert "At most [2] allocations of 2 thread(s) fit now" in info.value.reason


def test_adaptive_max_is_capped_by_what_is_left():
    capacity = Capacity(2, overcommit=4)
    adaptive = dep("a", adaptive={"enabled": True, "max_number_of_allocations": 64})
    assert capacity.max_allocations(adaptive) == 2
    assert capacity.max_allocations(adaptive.with_(num_threads=2)) == 1
    busy = [dep(f"o{i}", 2) for i in range(3)]  # 6 of 8 in use
    assert capacity.max_allocations(adaptive, busy) == 2
    assert capacity.max_allocations(adaptive, busy + [dep("x", 1)]) == 1
    assert demand(adaptive) == 0


def test_the_cap_comes_from_the_option_or_the_environment(monkeypatch):
    monkeypatch.delenv("INFERNETES_MAX_ALLOCATED_PROCESSORS", raising=False)
    machine = Capacity.of_machine().processors
    assert machine >= 1
    assert Capacity.of_machine(1).processors == 1
    assert Capacity.of_machine(64).processors == 64  # set on purpose: a deliberate overcommit
    monkeypatch.setenv("INFERNETES_MAX_ALLOCATED_PROCESSORS", "1")
    assert Capacity.of_machine().processors == 1
    monkeypatch.setenv("INFERNETES_MAX_ALLOCATED_PROCESSORS", "lots")
    with pytest.raises(ValueError, match="positive integer"):
        Capacity.of_machine()
