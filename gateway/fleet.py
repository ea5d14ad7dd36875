"""Every Triton endpoint behind the one `triton_grpc` setting, and each request spread over them.

The Service calls `Fleet` as it called one backend (infer, lease, catalog). Inside:

- discovery (gateway/discovery.py) turns the target into endpoint addresses, again every
  `discovery_interval_s` for `dns:` targets: a new replica is probed and joins, a removed
  one stops receiving requests at once and its channel closes when idle;
- one watch task per endpoint probes it (gateway/endpoint.py): every `health_interval_s`
  while ready, with exponential backoff (up to `probe_backoff_max_s`) while not;
- each call goes to the ready endpoint serving the model with the FEWEST calls in
  flight (ties broken at random), the first call of a shared-memory request to the
  endpoint whose slot holds its pixels;
- a call that failed before Triton took it is retried on another endpoint within the
  remaining deadline and the retry budget (gateway/retry.py); the endpoint is ejected;
- an endpoint whose calls time out while its health check passes (a hung Triton) is
  ejected as an outlier (gateway/outlier.py) and probed back with a real inference;
- a probe that raises what nobody foresaw is logged and counts as a failed probe: the
  watch goes on (a dead watch would leave its endpoint in its last state for good).

`balancer="pick_first"` / `"round_robin"` keep ONE gRPC channel over the whole target
with gRPC's own policy (what the gateway did before; for a service mesh that balances
gRPC itself, and for the benchmark's side-by-side): no own discovery, no retries.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time

from prometheus_client import Counter, Gauge

from . import catalog as catalogs
from . import retry
from .backend import Backend
from .catalog import Catalog
from .discovery import Discovery
from .endpoint import CONNECTING, EJECTED, READY, REFUSED, REMOVED, STATES, Endpoint, is_loopback
from .errors import ModelUnavailable, TritonError, TritonTimeout, TritonUnavailable, UpstreamError
from .outlier import TimeoutJudge, probe_inputs
from .settings import GatewaySettings
from .target import Target, parse

log = logging.getLogger("visionserve.gateway.fleet")
BACKOFF_MIN_S = 0.25
MIN_RETRY_S = 0.05   # less deadline than this left: answer the error, do not retry
_LOG = {READY: logging.INFO, EJECTED: logging.WARNING, REFUSED: logging.ERROR,
        CONNECTING: logging.INFO, REMOVED: logging.INFO}


class FleetMetrics:
    def __init__(self, registry):
        p = "visionserve_gateway_triton_"
        self.endpoints = Gauge(p + "endpoints", "Triton endpoints by state", ("state",),
                               registry=registry)
        self.transitions = Counter(p + "endpoint_transitions_total",
                                   "endpoint state changes, by the state entered", ("state",),
                                   registry=registry)
        self.retries = Counter(p + "retries_total", "calls repeated on another endpoint, by "
                               "the error of the failed attempt", ("code",), registry=registry)
        self.budget_exhausted = Counter(p + "retry_budget_exhausted_total",
                                        "retries refused by the retry budget", registry=registry)
        self.outliers = Counter(p + "outlier_ejections_total", "endpoints ejected because "
                                "their calls time out while their health check passes",
                                registry=registry)
        self.outliers_kept = Counter(p + "outlier_kept_total", "outliers left in rotation: "
                                     "no other ready endpoint serves the model, or half of "
                                     "the endpoints are out already", registry=registry)
        self.probe_errors = Counter(p + "probe_errors_total", "health probes that raised an "
                                    "unexpected exception", registry=registry)


class Fleet:
    def __init__(self, settings: GatewaySettings, metrics, connect=None):
        self.settings = settings
        self.legacy = settings.balancer != "least_outstanding"
        self.target = (Target(settings.triton_grpc, addresses=(settings.triton_grpc,))
                       if self.legacy else parse(settings.triton_grpc))
        self._connect = connect or self._triton
        self.metrics = FleetMetrics(metrics.registry)
        self._gateway_metrics = metrics
        self.endpoints: dict[str, Endpoint] = {}
        self._leaving: set[Endpoint] = set()   # removed, channel closing once idle
        self.discovery = Discovery(self.target, settings.discovery_interval_s, self._update)
        self.budget = retry.RetryBudget(settings.retry_budget_ratio)
        self._tasks: set[asyncio.Task] = set()
        self._version = 0            # bumped on any routing change
        self._cache_version = -1
        self._catalog: Catalog | None = None
        self._serving: dict[str, list[Endpoint]] = {}
        self._first_look = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------
    def _triton(self, address: str) -> Backend:
        from .backend import TritonBackend

        s = self.settings
        return TritonBackend(address, retry_after=s.retry_after_s, admin_key=s.triton_admin_key,
                             metrics=self._gateway_metrics,
                             lb_policy=s.balancer if self.legacy else None)

    async def start(self) -> None:
        """Discovery and probing run in the background; this waits at most
        `startup_wait_s` for the first look (resolution + one probe of each endpoint) so
        the first requests need not fail while it runs. It never fails: /readyz says why
        the gateway is not ready yet."""
        self._spawn(self.discovery.run())
        try:
            await asyncio.wait_for(self._first_look.wait(), self.settings.startup_wait_s)
        except asyncio.TimeoutError:
            pass
        if self.catalog is None:
            log.warning("Triton not ready yet (%s); serving anyway, /readyz says when",
                        self.reason())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ep in [*self.endpoints.values(), *self._leaving]:
            await ep.backend.close()
        self.endpoints.clear()
        self._leaving.clear()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _update(self, addresses: list[str]) -> None:
        """Discovery's answer: probe the new endpoints, stop routing to the gone ones."""
        for address in addresses:
            if address not in self.endpoints:
                ep = Endpoint(address, self._connect(address), self._shm_decision(address))
                s = self.settings
                ep.judge = TimeoutJudge(s.outlier_timeouts, s.outlier_timeout_ratio,
                                        s.outlier_window_s)
                self.endpoints[address] = ep
                self._spawn(self._watch(ep))
        for address in [a for a in self.endpoints if a not in addresses]:
            ep = self.endpoints.pop(address)
            self._set(ep, REMOVED, "no longer in " + self.target.text)
            self._leaving.add(ep)
            self._spawn(self._close_when_idle(ep))
        if not addresses:
            self._first_look.set()
        self._changed()

    def _shm_decision(self, address: str) -> tuple[bool, str]:
        from .shm import decide

        s = self.settings
        if s.shared_memory == "auto" and not is_loopback(address):
            return False, f"auto: {address} is not on loopback"
        local = "127.0.0.1:0" if is_loopback(address) else address
        return decide(s.shared_memory, local, s.triton_admin_key)

    async def _close_when_idle(self, ep: Endpoint) -> None:
        deadline = time.monotonic() + self.settings.triton_timeout_s + 1
        while ep.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self._leaving.discard(ep)
        await ep.backend.close()

    async def _watch(self, ep: Endpoint) -> None:
        s = self.settings
        backoff = BACKOFF_MIN_S
        while ep.state != REMOVED:
            generation = ep.generation
            state, reason = await self._probe(ep)
            if ep.generation == generation and ep.state != REMOVED:   # no newer verdict
                self._set(ep, state, reason)
            if all(e.state != CONNECTING for e in self.endpoints.values()):
                self._first_look.set()
            if ep.state == READY:
                backoff, delay = BACKOFF_MIN_S, s.health_interval_s
            else:
                delay = s.probe_backoff_max_s if ep.state == REFUSED else backoff
                backoff = min(backoff * 2, s.probe_backoff_max_s)
            await asyncio.sleep(delay)

    async def _probe(self, ep: Endpoint) -> tuple[str, str]:
        """The endpoint's health, and for an outlier its calls; an exception nobody
        foresaw (a bug, a malformed answer) is a failed probe, logged with its traceback
        once per kind, and the watch probes again after its backoff."""
        s = self.settings
        try:
            state, reason = await ep.probe(s.contract_repository, s.shm_pool_bytes,
                                           s.shared_memory == "on")
            if state == READY and ep.suspect is not None:
                state, reason = await self._probe_calls(ep)
        except Exception as exc:
            self.metrics.probe_errors.inc()
            kind = type(exc).__name__
            log.log(logging.DEBUG if kind == ep.probe_error else logging.ERROR,
                    "probing Triton endpoint %s raised %s; probing again", ep.address, kind,
                    exc_info=kind != ep.probe_error)
            ep.probe_error = kind
            return EJECTED, f"the probe failed unexpectedly ({kind})"
        ep.probe_error = None
        return state, reason

    async def _probe_calls(self, ep: Endpoint) -> tuple[str, str]:
        """An outlier's way back: one real inference of the model whose calls timed out,
        answered within the request deadline (its health check passed all along)."""
        model = ep.suspect
        info = ep.catalog.models.get(model) if ep.catalog else None
        if info is not None:
            timeout = self.settings.triton_timeout_s
            try:
                await ep.backend.infer(model, probe_inputs(info), info.output_names[:1],
                                       timeout_s=timeout,
                                       queue_timeout_us=info.triton_timeout_us(timeout))
            except UpstreamError as exc:
                if type(exc) is not TritonError:   # the model ran and refused zeros: it runs
                    return EJECTED, f"calls to {model} time out; probe call: {exc.code}"
        ep.suspect = None
        ep.judge.reset()
        return READY, ""

    def _set(self, ep: Endpoint, state: str, reason: str) -> None:
        if (state, reason) == (ep.state, ep.reason):
            return
        old, ep.state, ep.reason = ep.state, state, reason
        ep.generation += 1
        ep.since = time.monotonic()
        if state != READY:
            ep.catalog = None if state != REMOVED else ep.catalog   # learned again on return
        if state != old:
            self.metrics.transitions.labels(state).inc()
            log.log(_LOG[state], "Triton endpoint %s: %s -> %s%s", ep.address, old, state,
                    f" ({reason})" if reason else "")
        self._changed()

    def eject(self, ep: Endpoint, reason: str) -> None:
        if ep.state == READY and not self.legacy:
            self._set(ep, EJECTED, reason)

    def _judge(self, ep: Endpoint, model: str, exc: UpstreamError, fair: bool) -> None:
        """Count how a failed call ended (gateway/outlier.py); eject an outlier unless
        no other ready endpoint serves the model or half of the endpoints are out as
        outliers already (a fleet that is slow everywhere is overloaded, not sick)."""
        if type(exc) is TritonError:
            ep.judge.answered()
            return
        if not isinstance(exc, TritonTimeout) or not fair:
            return
        why = ep.judge.timed_out()
        if why is None or ep.state != READY or self.legacy:
            return
        others = [e for e in self.endpoints.values() if e is not ep and e.serves(model)]
        out = sum(e.suspect is not None for e in self.endpoints.values())
        if not others or out >= max(1, len(self.endpoints) // 2):
            self.metrics.outliers_kept.inc()
            log.log(logging.WARNING if ep.judge.in_a_row == ep.judge.limit else logging.DEBUG,
                    "Triton endpoint %s: %s (%s), kept in rotation: %s", ep.address, why, model,
                    "no other ready endpoint serves it" if not others
                    else f"{out} endpoints are out as outliers already")
            return
        ep.suspect = model
        self.metrics.outliers.inc()
        self._set(ep, EJECTED, f"{why} ({model}) while its health check passes")

    def _changed(self) -> None:
        self._version += 1
        counts = dict.fromkeys(STATES, 0)
        for ep in self.endpoints.values():
            counts[ep.state] += 1
        for state, n in counts.items():
            self.metrics.endpoints.labels(state).set(n)

    # -- what the routes see ------------------------------------------------------------
    def _refresh(self) -> None:
        if self._cache_version == self._version:
            return
        ready = [ep for ep in self.endpoints.values() if ep.state == READY and ep.catalog]
        self._catalog = catalogs.merge([ep.catalog for ep in ready])
        self._serving = {}
        for ep in ready:
            for model in ep.catalog.models:
                self._serving.setdefault(model, []).append(ep)
        self._cache_version = self._version

    @property
    def catalog(self) -> Catalog | None:
        self._refresh()
        return self._catalog

    def readiness(self) -> tuple[bool, dict]:
        ready = self.catalog is not None
        body = {"ready": ready, "target": self.target.text,
                "endpoints": [ep.describe() for ep in self.endpoints.values()]}
        if not ready:
            body["reason"] = self.reason()
        return ready, body

    def reason(self) -> str:
        if self.discovery.addresses is None:
            return f"resolving {self.target.text}" + (f": {self.discovery.error}"
                                                        if self.discovery.error else "")
        if not self.endpoints:
            return f"{self.target.text} has no endpoint (no DNS record)"
        return "no Triton endpoint is ready: " + "; ".join(
            f"{ep.address} {ep.state} ({ep.reason})" for ep in self.endpoints.values())

    # -- the request path -----------------------------------------------------------------
    def _pick(self, model: str, tried: list[Endpoint]) -> Endpoint | None:
        """The ready endpoint serving `model` with the fewest calls in flight, not tried
        yet; ties go to a random one (a rotation, so no endpoint is favoured)."""
        self._refresh()
        pool = [ep for ep in self._serving.get(model, ()) if ep not in tried]
        if len(pool) > 1:
            k = random.randrange(len(pool))
            pool = pool[k:] + pool[:k]
        return min(pool, key=_load, default=None)

    def _unavailable(self, model: str) -> UpstreamError:
        retry_after = self.settings.retry_after_s
        if self.catalog is not None:
            return ModelUnavailable(f"no ready Triton endpoint serves {model!r}",
                                    retry_after=retry_after)
        return TritonUnavailable(self.reason(), retry_after=retry_after)

    def _shm_owner(self, inputs) -> Endpoint | None:
        for ep in self.endpoints.values():
            pool = getattr(ep.backend, "shm", None) if ep.shm_ready else None
            if pool is not None and any(pool.locate(a) for a in inputs.values()
                                        if a.dtype.kind == "u" and a.flags.c_contiguous):
                return ep
        return None

    async def lease(self, frame_hw, max_batch, n):
        """A shared-memory slot of the least-loaded ready endpoint that has them, or None."""
        self._refresh()
        ready = [ep for ep in self.endpoints.values() if ep.state == READY and ep.shm_ready]
        if not ready:
            return None
        ep = min(random.sample(ready, len(ready)), key=_load)
        return await ep.backend.lease(frame_hw, max_batch, n)

    async def infer(self, model, inputs, outputs, *, timeout_s=None, **_):
        timeout_s = timeout_s or self.settings.triton_timeout_s
        deadline = time.monotonic() + timeout_s
        owner = self._shm_owner(inputs) if any(ep.shm_ready for ep in self.endpoints.values()) else None
        tried: list[Endpoint] = []
        self.budget.deposit()
        while True:
            ep = owner if owner is not None and not tried and owner.serves(model) else None
            ep = ep or self._pick(model, tried)
            if ep is None:
                raise self._unavailable(model)
            remaining = deadline - time.monotonic()
            info = ep.catalog.models.get(model) if ep.catalog else None
            ep.outstanding += 1
            try:
                out = await ep.backend.infer(
                    model, inputs, outputs, timeout_s=remaining,
                    queue_timeout_us=info.triton_timeout_us(remaining) if info else None)
                ep.judge.answered()
                return out
            except UpstreamError as exc:
                # a timeout counts against the endpoint only when the call had most of
                # the deadline (not a retry's remnant)
                self._judge(ep, model, exc, fair=remaining >= 0.5 * timeout_s)
                act = retry.action(exc)
                if act.eject:
                    self.eject(ep, exc.message)
                tried.append(ep)
                if (not act.retry or self.legacy or deadline - time.monotonic() < MIN_RETRY_S
                        or self._pick(model, tried) is None):
                    raise
                if not self.budget.withdraw():
                    self.metrics.budget_exhausted.inc()
                    raise
                self.metrics.retries.labels(exc.code).inc()
                log.info("retrying %s on another endpoint after %s from %s", model, exc.code,
                         ep.address)
            finally:
                ep.outstanding -= 1


def _load(ep: Endpoint) -> int:
    return ep.outstanding
