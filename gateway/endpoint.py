"""One Triton endpoint as the gateway sees it: its channel, its catalog, its health.

States:
  connecting  discovered, not probed successfully yet
  ready       live, every model it serves ready, metadata matching the contract: routed to
  ejected     a probe or a request failed (down, draining, models not ready), or its calls
              time out while its health check passes (an outlier: gateway/outlier.py): not
              routed, probed back with exponential backoff (an outlier also with one real
              inference); its catalog is learned again on return (a restarted Triton may
              serve another repository)
  refused     it serves a different contract (ContractMismatch) or refused the shared
              memory that shared_memory=on requires: never routed, logged as an error,
              shown in /readyz, probed again slowly in case it is fixed
  removed     gone from discovery: not routed; its channel closes once idle
"""
from __future__ import annotations

import ipaddress
import logging
import time

from .backend import Backend
from .catalog import Catalog, route_models
from .errors import ContractMismatch, UpstreamError
from .outlier import TimeoutJudge
from .shm import SharedMemoryUnavailable

log = logging.getLogger("visionserve.gateway.endpoint")

CONNECTING, READY, EJECTED, REFUSED, REMOVED = "connecting", "ready", "ejected", "refused", "removed"
STATES = (CONNECTING, READY, EJECTED, REFUSED, REMOVED)


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, localhost: shared memory is possible (the same machine)."""
    host = address[1:address.index("]")] if address.startswith("[") else address.rsplit(":", 1)[0]
    if host.lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Endpoint:
    def __init__(self, address: str, backend: Backend, shared_memory: tuple[bool, str] = (False, "")):
        self.address = address
        self.backend = backend
        self.state = CONNECTING
        self.reason = "not probed yet"
        self.catalog: Catalog | None = None
        self.outstanding = 0            # calls in flight (the balancer's load signal)
        self.since = time.monotonic()
        self.generation = 0             # bumped on every state change
        self.use_shm, self.shm_why = shared_memory
        self.shm_ready = False
        self.judge = TimeoutJudge()     # how its calls end (the fleet sets the limits)
        self.suspect: str | None = None  # an outlier: the model whose calls timed out
        self.probe_error: str | None = None   # the kind of the last probe's exception

    def serves(self, model: str) -> bool:
        return self.state == READY and self.catalog is not None and model in self.catalog.models

    def describe(self) -> dict:
        out = {"address": self.address, "state": self.state, "outstanding": self.outstanding,
               "for_s": round(time.monotonic() - self.since, 1)}
        if self.state != READY:
            out["reason"] = self.reason
        if self.catalog is not None:
            out["models"] = sorted(self.catalog.models)
        if self.use_shm:
            out["shared_memory"] = self.shm_ready
        return out

    async def probe(self, repository, shm_pool_bytes: int, shm_required: bool) -> tuple[str, str]:
        """(state, reason) after asking Triton: liveness, the catalog (learned when missing,
        checked against the contract), every served model ready, shared memory set up."""
        try:
            if self.catalog is None:
                await self.backend.ready([])          # raises while down
                catalog = await Catalog.learn(self.backend, repository)
                if not catalog.models:
                    return EJECTED, ("serves none of the gateway's models "
                                     + ", ".join(route_models(repository)))
                self.catalog = catalog
            states = await self.backend.ready(sorted(self.catalog.models))
            waiting = sorted(m for m, ok in states.items() if not ok)
            if waiting:
                return EJECTED, "models not ready: " + ", ".join(waiting)
            if self.use_shm and not self.shm_ready:
                await self._shared_memory(shm_pool_bytes, shm_required)
            return READY, ""
        except ContractMismatch as exc:
            return REFUSED, f"contract mismatch: {exc}"
        except SharedMemoryUnavailable as exc:
            return REFUSED, str(exc)
        except UpstreamError as exc:
            return EJECTED, exc.message

    async def _shared_memory(self, pool_bytes: int, required: bool) -> None:
        """Image inputs through system shared memory with this endpoint (gateway/shm.py):
        a slot pool of at most `pool_bytes`, one slot per served frame shape registered now. required (shared_memory=on): a
        failure refuses the endpoint; auto: it stays on the wire."""
        shapes = sorted({(m.frame, m.max_batch_size) for m in self.catalog.models.values()
                         if m.frame is not None and m.max_batch_size > 0})
        enable = getattr(self.backend, "enable_shared_memory", None)
        try:
            if enable is None:
                raise RuntimeError("this backend has no shared memory")
            await enable(pool_bytes, shapes)
        except Exception as exc:
            if required:
                raise SharedMemoryUnavailable(
                    f"shared_memory=on but it cannot be set up with {self.address}: {exc}") from exc
            log.warning("%s: shared memory unavailable, image inputs over the gRPC wire: %s",
                        self.address, exc)
            self.use_shm = False
            return
        self.shm_ready = True
        log.info("%s: image inputs through system shared memory (%s); frames %s", self.address,
                 self.shm_why, ", ".join(f"{h}x{w} (max batch {b})" for (h, w), b in shapes))
