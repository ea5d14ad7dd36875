"""The fleet's policies with fake endpoints (the per-endpoint seam): the target forms,
balancing, ejection and probing back, retries and their budget, deadlines, discovery
changes, and start-up without Triton. Real processes: tests/integration/test_fleet_live.py."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway import retry
from gateway.errors import ModelUnavailable, TritonError, TritonOverloaded, TritonTimeout, TritonUnavailable
from gateway.fleet import Fleet
from gateway.metrics import Metrics
from gateway.settings import GatewaySettings
from gateway.target import TargetError, parse
from gateway.testing import FakeBackend

ADDRS = ["127.0.0.2:8001", "127.0.0.3:8001", "127.0.0.4:8001"]
OUT = ("boxes", "scores", "classes", "num_detections")
FRAME = {"images": np.zeros((1, 640, 640, 3), np.uint8)}


# -- the one setting -----------------------------------------------------------------------
@pytest.mark.parametrize("text,addresses,name,port,server", [
    ("127.0.0.1:8001", ("127.0.0.1:8001",), "", 0, None),
    ("triton:8001", ("triton:8001",), "", 0, None),
    ("[::1]:8001", ("[::1]:8001",), "", 0, None),
    ("ipv4:127.0.0.2:8001,127.0.0.3:9001", ("127.0.0.2:8001", "127.0.0.3:9001"), "", 0, None),
    ("ipv6:[::1]:8001,[::2]:8001", ("[::1]:8001", "[::2]:8001"), "", 0, None),
    ("dns:///triton-grpc:8001", (), "triton-grpc", 8001, None),
    ("dns://127.0.0.1:5353/triton.test:8001", (), "triton.test", 8001, ("127.0.0.1", 5353)),
    ("dns://10.0.0.10/triton:8001", (), "triton", 8001, ("10.0.0.10", 53)),
])
def test_target_forms(text, addresses, name, port, server):
    t = parse(text)
    assert (t.addresses, t.name, t.port, t.dns_server) == (addresses, name, port, server)
    assert t.dynamic == bool(name)


@pytest.mark.parametrize("text", ["", "triton", "http://triton:8001", "unix:/tmp/s",
                                  "ipv4:", "ipv4:127.0.0.2", "ipv4:::1:80", "ipv6:127.0.0.1:80",
                                  "dns:triton:8001", "dns:///triton", "dns://name.server/t:1",
                                  "::1:8001", "triton:http", "triton:70000"])
def test_bad_targets_name_the_accepted_forms(text):
    with pytest.raises(TargetError, match="accepted forms"):
        parse(text)
    with pytest.raises(ValueError):
        GatewaySettings(triton_grpc=text)


# -- a fleet of fakes ------------------------------------------------------------------------
def fleet_of(n=3, **settings):
    fakes = {a: FakeBackend(models=("yolo", "faces", "scrfd", "face_align", "arcface"))
             for a in ADDRS[:n]}
    s = GatewaySettings(triton_grpc="ipv4:" + ",".join(ADDRS[:n]), health_interval_s=0.05,
                        probe_backoff_max_s=0.1, **settings)
    return Fleet(s, Metrics(), connect=fakes.__getitem__), fakes


def run(coro):
    return asyncio.run(coro)


async def started(fleet):
    await fleet.start()
    assert fleet.readiness()[0], fleet.readiness()
    return fleet


async def eventually(cond, timeout_s=3.0):
    for _ in range(int(timeout_s / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


def test_least_outstanding_spreads_concurrent_calls_evenly():
    async def go():
        fleet, fakes = fleet_of()
        await started(fleet)
        for f in fakes.values():
            f.delay_s = 0.02
        await asyncio.gather(*(fleet.infer("yolo", FRAME, OUT) for _ in range(90)))
        await fleet.close()
        return [len(f.calls) for f in fakes.values()]

    counts = run(go())
    assert sum(counts) == 90 and max(counts) - min(counts) <= 3, counts


def test_a_slow_endpoint_gets_fewer_calls():
    async def go():
        fleet, fakes = fleet_of(2)
        await started(fleet)
        slow, fast = fakes.values()
        slow.delay_s, fast.delay_s = 0.2, 0.005

        async def worker():   # a closed loop: each call waits for the previous one
            for _ in range(10):
                await fleet.infer("yolo", FRAME, OUT)

        await asyncio.gather(*(worker() for _ in range(4)))
        await fleet.close()
        return len(slow.calls), len(fast.calls)

    slow, fast = run(go())
    assert fast >= 2 * slow, (slow, fast)


def test_a_down_endpoint_is_ejected_retried_around_and_probed_back():
    async def go():
        fleet, fakes = fleet_of()
        await started(fleet)
        down = fakes[ADDRS[0]]
        down.fail = TritonUnavailable("failed to connect to all addresses")
        results = await asyncio.gather(*(fleet.infer("yolo", FRAME, OUT) for _ in range(30)))
        assert all(r["boxes"].shape == (1, 100, 4) for r in results)
        state = {e["address"]: e for e in fleet.readiness()[1]["endpoints"]}[ADDRS[0]]
        assert state["state"] == "ejected" and "failed to connect" in state["reason"]
        assert fleet.readiness()[0]            # the others carry on
        assert down.calls == []
        down.fail = None
        assert await eventually(lambda: fleet.endpoints[ADDRS[0]].state == "ready")
        await asyncio.gather(*(fleet.infer("yolo", FRAME, OUT) for _ in range(30)))
        await fleet.close()
        return down, fleet

    down, fleet = run(go())
    assert down.calls, "the endpoint that came back got no calls"
    text = fleet.metrics.retries.labels("triton_unavailable")._value.get()
    assert text >= 1


@pytest.mark.parametrize("error,retried,ejected", [
    (TritonOverloaded("Exceeds maximum queue size", retry_after=1), True, False),
    (ModelUnavailable("has no available versions", retry_after=1), True, True),
    (TritonTimeout("deadline"), False, False),
    (TritonError("the model failed"), False, False),
])
def test_what_is_retried_and_what_is_not(error, retried, ejected):
    async def go():
        fleet, fakes = fleet_of(2)
        await started(fleet)
        bad, good = fakes.values()
        fleet.endpoints[ADDRS[1]].outstanding = 100   # the first call goes to `bad`
        bad.fail = error
        try:
            await fleet.infer("yolo", FRAME, OUT)
            outcome = "ok"
        except type(error):
            outcome = "error"
        state = fleet.endpoints[ADDRS[0]].state
        await fleet.close()
        return outcome, len(bad.deadlines), len(good.calls), state

    outcome, bad_tries, good_calls, state = run(go())
    assert bad_tries == 1                   # never again on the endpoint that failed
    assert (outcome, good_calls) == (("ok", 1) if retried else ("error", 0))
    assert (state != "ready") == ejected


def test_the_retry_budget_caps_retries():
    now = [0.0]
    budget = retry.RetryBudget(ratio=0.1, burst=2, min_per_s=0.0, clock=lambda: now[0])
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()
    for _ in range(11):   # 1.1 tokens: one retry per ten requests
        budget.deposit()
    assert budget.withdraw() and not budget.withdraw()

    async def go():   # every endpoint fails: at most burst retries, then the error
        fleet, fakes = fleet_of(3, retry_budget_ratio=0.0)
        await started(fleet)
        fleet.budget = retry.RetryBudget(0.0, burst=1, min_per_s=0.0)
        for f in fakes.values():
            f.fail = TritonOverloaded("Exceeds maximum queue size", retry_after=1)
        with pytest.raises(TritonOverloaded):
            await fleet.infer("yolo", FRAME, OUT)
        tries = sum(len(f.deadlines) for f in fakes.values())
        await fleet.close()
        return tries, fleet.metrics.budget_exhausted._value.get()

    tries, exhausted = run(go())
    assert (tries, exhausted) == (2, 1)


def test_the_deadline_reaches_triton_capped_by_the_queue_policy():
    async def go():
        fleet, fakes = fleet_of(1, triton_timeout_s=0.5)
        await started(fleet)
        await fleet.infer("yolo", FRAME, OUT, timeout_s=0.5)
        await fleet.infer("yolo", FRAME, OUT, timeout_s=0.05)
        await fleet.close()
        return fakes[ADDRS[0]].deadlines

    (t1, q1), (t2, q2) = run(go())
    # yolo's committed queue policy: override allowed, 200 ms default
    assert 0.45 < t1 <= 0.5 and q1 == 200_000
    assert 0.0 < t2 <= 0.05 and 40_000 < q2 <= 50_000


def test_discovery_adds_and_removes_endpoints():
    async def go():
        fleet, fakes = fleet_of(3)
        await started(fleet)
        fleet._update(ADDRS[:2])                 # the third left DNS
        assert ADDRS[2] not in fleet.endpoints
        await asyncio.gather(*(fleet.infer("yolo", FRAME, OUT) for _ in range(20)))
        assert fakes[ADDRS[2]].calls == [] and fakes[ADDRS[2]].closed
        fakes[ADDRS[2]].closed = False
        fleet._update(ADDRS)                     # and came back
        assert await eventually(lambda: fleet.endpoints[ADDRS[2]].state == "ready")
        await asyncio.gather(*(fleet.infer("yolo", FRAME, OUT) for _ in range(30)))
        await fleet.close()
        return fakes[ADDRS[2]].calls

    assert run(go())


def test_starts_without_triton_and_becomes_ready_when_one_endpoint_is():
    async def go():
        fleet, fakes = fleet_of(2, startup_wait_s=0.5)
        for f in fakes.values():
            f.fail = TritonUnavailable("failed to connect to all addresses")
        await fleet.start()                     # returns: the gateway serves anyway
        ready, body = fleet.readiness()
        assert not ready and "failed to connect" in body["reason"], body
        with pytest.raises(TritonUnavailable, match="no Triton endpoint is ready"):
            await fleet.infer("yolo", FRAME, OUT)
        fakes[ADDRS[1]].fail = None
        assert await eventually(lambda: fleet.readiness()[0])
        await fleet.infer("yolo", FRAME, OUT)
        await fleet.close()
        return fakes

    fakes = run(go())
    assert len(fakes[ADDRS[1]].calls) == 1 and not fakes[ADDRS[0]].calls


def test_shared_memory_is_per_endpoint_and_a_retry_elsewhere_uses_the_wire():
    """Two loopback endpoints with their own slot pools: the lease comes from one, the
    call goes to that one first; when it fails, the retry goes to the other over the wire."""
    from tests.support.fakes import ShmFake

    async def go():
        fakes = {a: ShmFake() for a in ADDRS[:2]}
        s = GatewaySettings(triton_grpc="ipv4:" + ",".join(ADDRS[:2]), shared_memory="on",
                            triton_admin_key="key")
        fleet = Fleet(s, Metrics(), connect=fakes.__getitem__)
        await started(fleet)
        lease = await fleet.lease((640, 640), 16, 1)
        owner = next(f for f in fakes.values() if f.pool.stats()["in_use"] == 1)
        other = next(f for f in fakes.values() if f is not owner)
        await fleet.infer("yolo", {"images": lease.array}, OUT)
        owner.fail = TritonUnavailable("Socket closed")
        await fleet.infer("yolo", {"images": lease.array}, OUT)
        lease.release()
        await fleet.close()
        for f in fakes.values():
            await f.pool.close()
        return owner.in_slot, other.in_slot

    owner_calls, other_calls = run(go())
    assert owner_calls == [True, True]     # both first attempts in its own slot
    assert other_calls == [False]          # the retry: the wire


# -- Triton's connection age ------------------------------------------------------------------
def test_a_call_lost_to_a_goaway_race_is_sent_again_on_the_same_channel():
    """Triton's --grpc-max-connection-age closes a connection as a call starts: the call is
    sent once more (within its deadline) instead of failing and ejecting a healthy endpoint;
    any other UNAVAILABLE, or a second GOAWAY, is raised as it came."""
    import grpc

    from gateway.backend import _AgainAfterGoaway

    def error(details):
        return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                    grpc.aio.Metadata(), details)

    goaway = error("Stream removed (Socket closed (GOAWAY received; Error code: 0; Debug Text: ))")
    down = error("failed to connect to all addresses")

    def method(*outcomes):
        calls = []

        async def call(request, timeout=None):
            calls.append(timeout)
            outcome = outcomes[len(calls) - 1]
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return _AgainAfterGoaway(call), calls

    again, calls = method(goaway, "answer")
    assert asyncio.run(again(b"req", timeout=2.0)) == "answer"
    assert len(calls) == 2 and calls[0] == 2.0 and 0 < calls[1] <= 2.0
    for outcomes in ((down, "answer"), (goaway, goaway)):
        again, calls = method(*outcomes)
        with pytest.raises(grpc.aio.AioRpcError):
            asyncio.run(again(b"req", timeout=2.0))
        assert len(calls) == (1 if outcomes[0] is down else 2)
