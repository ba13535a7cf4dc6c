"""Leader election with a ``coordination.k8s.io`` Lease, as client-go's leaderelection does it.

Only the holder of the Lease runs the operator (kopf's handlers, the status loop, the autoscaler), so
two operator replicas are safe: the other waits, and takes over when the holder stops renewing
(``lease_duration_s`` after its last renewal) or hands the Lease back on shutdown. Writes carry the
resourceVersion that was read, so two candidates can never both win the same term (409 for one).
A leader that cannot renew before its term ends stops leading (the process exits and restarts as a
candidate), rather than risk two leaders.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import Conflict
from .client import Kube

log = logging.getLogger("infernetes.leader")
LEASES = "leases"
COORDINATION = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class LeaseSettings:
    name: str = "infernetes-operator"
    namespace: str = "default"
    identity: str = ""
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def who(self) -> str:
        return self.identity or f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro_time(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def expired(spec: dict[str, Any], now: float) -> bool:
    """Whether a Lease's term is over (no holder, released, or not renewed within its duration)."""
    if not spec.get("holderIdentity"):
        return True
    renewed = _epoch(spec.get("renewTime")) or _epoch(spec.get("acquireTime"))
    duration = float(spec.get("leaseDurationSeconds") or 0)
    return renewed is None or now > renewed + duration


class LeaderElector:
    def __init__(self, kube: Kube, settings: LeaseSettings) -> None:
        self.kube = kube
        self.settings = settings
        self.identity = settings.who()
        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        self._last_renew = 0.0

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this candidate holds the Lease afterwards."""
        s = self.settings
        now = time.time()
        lease = await self.kube.get(COORDINATION, LEASES, s.namespace, s.name)
        mine = {"holderIdentity": self.identity, "leaseDurationSeconds": int(s.lease_duration_s),
                "renewTime": _micro_time(now)}
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": s.name, "namespace": s.namespace},
                    "spec": {**mine, "acquireTime": _micro_time(now), "leaseTransitions": 0}}
            try:
                await self.kube.create(COORDINATION, LEASES, s.namespace, body)
            except Conflict:
                return False
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        if holder != self.identity and not expired(spec, now):
            return False
        new_spec = {**spec, **mine}
        if holder != self.identity:
            new_spec["acquireTime"] = _micro_time(now)
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        body = {**lease, "spec": new_spec}
        try:  # PUT with the resourceVersion read: a concurrent winner makes this a 409
            await self.kube.request("PUT", f"/apis/{COORDINATION}/namespaces/{s.namespace}/{LEASES}/{s.name}",
                                    body=body)
        except Conflict:
            return False
        return True

    async def acquire(self) -> None:
        """Wait until this candidate leads."""
        while True:
            try:
                if await self.try_acquire_or_renew():
                    self._last_renew = time.monotonic()
                    self.leading.set()
                    log.info("leading as %s (lease %s/%s)", self.identity, self.settings.namespace, self.settings.name)
                    return
            except Exception as exc:  # noqa: BLE001 - an API error or an unreachable server: try again
                log.warning("could not read or take the lease: %s", exc)
            await asyncio.sleep(self.settings.retry_period_s)

    async def keep(self) -> None:
        """Renew while leading; returns (with ``lost`` set) when the Lease could not be renewed in time."""
        s = self.settings
        while True:
            await asyncio.sleep(s.retry_period_s)
            try:
                if await self.try_acquire_or_renew():
                    self._last_renew = time.monotonic()
                    continue
                log.error("another candidate took the lease: stopping")
                break
            except Exception as exc:  # noqa: BLE001 - an API or network error: retried until the renew deadline
                log.warning("could not renew the lease: %s", exc)
            if time.monotonic() - self._last_renew > s.renew_deadline_s:
                log.error("the lease was not renewed for %.0fs: stopping", s.renew_deadline_s)
                break
        self.leading.clear()
        self.lost.set()

    async def release(self) -> None:
        """Hand the Lease back (on shutdown), so that the other replica takes over at once."""
        s = self.settings
        try:
            lease = await self.kube.get(COORDINATION, LEASES, s.namespace, s.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1,
                    "renewTime": _micro_time(time.time())}
            await self.kube.request("PUT", f"/apis/{COORDINATION}/namespaces/{s.namespace}/{LEASES}/{s.name}",
                                    body={**lease, "spec": {k: v for k, v in spec.items() if v is not None}})
        except Exception as exc:  # noqa: BLE001 - best effort: the term runs out by itself
            log.warning("could not release the lease: %s", exc)
