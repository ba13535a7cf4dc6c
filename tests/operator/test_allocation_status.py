"""An allocation that has stopped (its listening socket closed) still reports its status (issue 13, D2):
runtime.wait and _stats read the status of every allocation, also of those a DELETE or a scale-down is
stopping, and used to get "OSError: bad file descriptor" from the closed socket (a 500 to the PUT)."""

from __future__ import annotations

import socket

from infernetes.operator.records import Deployment
from infernetes.operator.runtime.local import Allocation, LocalDeployment


def test_a_stopped_allocation_still_reports_its_status():
    spec = Deployment(deployment_id="d", model_id="m", task_type="text_embedding", num_threads=1, num_allocations=2)
    dep = LocalDeployment(spec=spec, model=None, target=2)
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    ports = [s.getsockname()[1] for s in socks]
    dep.allocations = [Allocation(index=i, deployment=dep, sock=s) for i, s in enumerate(socks)]
    socks[0].close()  # the first one stopped; the second still drains
    dep.allocations[0].state = "stopped"
    try:
        status = dep.status()  # what runtime.wait and _stats evaluate
        assert [a.url for a in status.allocations] == [f"http://127.0.0.1:{p}" for p in ports]
        assert dep.ready_urls() == []
    finally:
        socks[1].close()
