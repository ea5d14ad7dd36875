"""Outlier ejection and the health watch's resilience (issue 20), with fake endpoints:
the timeout rule on an injected clock, a hung-but-healthy endpoint ejected and probed
back with a real call, the guard that keeps the last one, and a probe raising what
nobody foresaw. Real processes: tests/integration/test_fleet_outlier_live.py."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

import contract
from gateway.catalog import Catalog
from gateway.errors import TritonError, TritonTimeout, TritonUnavailable
from gateway.fleet import Fleet
from gateway.metrics import Metrics
from gateway.outlier import TimeoutJudge, probe_inputs
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend
from tests.support.polling import eventually

ADDRS = ["127.0.0.2:8001", "127.0.0.3:8001", "127.0.0.4:8001"]
OUT = ("boxes", "scores", "classes", "num_detections")
FRAME = {"images": np.zeros((1, 640, 640, 3), np.uint8)}
DEADLINE_S = 0.05


# -- the rule ---------------------------------------------------------------------------------
def judge(**kw):
    now = [0.0]
    return TimeoutJudge(clock=lambda: now[0], **kw), now


def test_timeouts_in_a_row_eject_and_an_answer_resets_the_row():
    j, now = judge(timeouts=3, ratio=1.0, window_s=30)
    assert j.timed_out() is None and j.timed_out() is None
    j.answered()
    assert j.timed_out() is None and j.timed_out() is None
    now[0] = 100.0                                     # the row has no time limit
    assert j.timed_out() == "3 calls in a row timed out"


def test_a_share_of_timeouts_within_the_window_ejects():
    """One hung instance of two: timeouts alternate with answers, never 3 in a row."""
    j, now = judge(timeouts=3, ratio=0.5, window_s=10)
    verdicts = []
    for i in range(6):
        now[0] = float(i)
        j.answered()
        verdicts.append(j.timed_out())
    assert verdicts[:2] == [None, None]
    assert verdicts[2] == "3 of 6 calls in 10 s timed out"


def test_timeouts_older_than_the_window_no_longer_count():
    j, now = judge(timeouts=3, ratio=0.5, window_s=10)
    for t in (0.0, 0.5):
        now[0] = t
        j.answered()
        j.timed_out()
    now[0] = 20.0                                       # both left the window
    j.answered()
    assert j.timed_out() is None                        # 1 of 2 in the window
    j.answered()
    assert j.timed_out() is None                        # 2 of 4
    assert len(j._seconds) == 1                          # memory per second, not per call


def test_a_low_share_does_not_eject():
    j, _ = judge(timeouts=3, ratio=0.5, window_s=10)
    for _ in range(3):
        for _ in range(3):
            j.answered()
        assert j.timed_out() is None                    # 3 of 12 at most: 25%


def test_zero_turns_the_rule_off():
    j, _ = judge(timeouts=0)
    assert all(j.timed_out() is None for _ in range(50))


def test_probe_inputs_fit_every_served_model():
    """Zeros of each served model's input shapes and types, batch 1: the model accepts
    them (Triton checks shapes and types before executing)."""
    repo = contract.load_all()
    for name, c in repo.items():
        if c.max_batch_size < 1:
            continue
        info = asyncio.run(Catalog.learn(FakeBackend(models=(name,)), contract.MODEL_REPOSITORY)).models.get(name)
        if info is None:
            continue
        inputs = probe_inputs(info)
        assert set(inputs) == {t.name for t in c.inputs}, name
        for spec in c.inputs:
            arr = inputs[spec.name]
            assert arr.shape[0] == 1 and arr.dtype == spec.dtype, (name, spec, arr.shape)
            assert all(d == s or s < 0 for d, s in zip(arr.shape[1:], spec.dims)), (name, spec)


# -- a fleet with a hung endpoint ---------------------------------------------------------------
class HangingFake(FakeBackend):
    """A Triton whose health checks pass while, when `hung`, every call runs into its
    deadline (gRPC's DEADLINE_EXCEEDED) without an answer."""

    def __init__(self):
        super().__init__(models=("yolo",))
        self.hung = False
        self.probes = 0            # calls made while hung that were not client traffic

    async def infer(self, model, inputs, outputs, *, timeout_s=None, queue_timeout_us=None):
        if self.hung:
            await asyncio.sleep(timeout_s)
            raise TritonTimeout("Triton did not answer before the deadline")
        return await super().infer(model, inputs, outputs, timeout_s=timeout_s,
                                   queue_timeout_us=queue_timeout_us)


def fleet_of(n, **settings):
    fakes = {a: HangingFake() for a in ADDRS[:n]}
    s = GatewaySettings(triton_grpc="ipv4:" + ",".join(ADDRS[:n]), health_interval_s=0.05,
                        probe_backoff_max_s=0.1, triton_timeout_s=DEADLINE_S, **settings)
    return Fleet(s, Metrics(), connect=fakes.__getitem__), fakes


async def started(fleet):
    await fleet.start()
    assert fleet.readiness()[0], fleet.readiness()
    return fleet


async def outcomes(fleet, n, concurrency=1):
    """n calls, `concurrency` at a time: 'ok' or the error code of each."""
    out = []

    async def one():
        try:
            await fleet.infer("yolo", FRAME, OUT)
            out.append("ok")
        except (TritonTimeout, TritonError) as exc:
            out.append(exc.code)

    for i in range(0, n, concurrency):
        await asyncio.gather(*(one() for _ in range(min(concurrency, n - i))))
    return out


def test_a_hung_but_healthy_endpoint_is_ejected_and_probed_back_with_a_real_call():
    async def go():
        fleet, fakes = fleet_of(2)
        await started(fleet)
        hung = fakes[ADDRS[0]]
        hung.hung = True
        before = await outcomes(fleet, 40)
        ep = fleet.endpoints[ADDRS[0]]
        assert ep.state == "ejected" and "3 calls in a row timed out" in ep.reason, ep.reason
        assert ep.suspect == "yolo"
        # its health check passes all along: only a real call may bring it back
        await asyncio.sleep(0.5)
        assert ep.state == "ejected"
        after = await outcomes(fleet, 20)
        hung.hung = False
        assert await eventually(lambda: ep.state == "ready", 3.0)
        calls = len(hung.calls)
        assert calls >= 1 and hung.calls[-1] == ("yolo", 1)     # the probe call
        back = await outcomes(fleet, 20, concurrency=4)
        await fleet.close()
        return before, after, back, len(hung.calls) - calls, fleet.metrics

    before, after, back, served_after_return, metrics = asyncio.run(go())
    assert before.count("triton_timeout") == 3, before    # what the hang cost: 3 x 504
    assert before.count("ok") == 37
    assert after == ["ok"] * 20 and back == ["ok"] * 20
    assert served_after_return >= 5, "the endpoint that came back got no calls"
    assert metrics.outliers._value.get() == 1


def test_the_last_endpoint_serving_a_model_is_never_ejected_as_an_outlier():
    """With nothing to move the traffic to, ejecting would turn slow 504s into 503s for
    everyone (the deadline and the capacity gates bound what a slow Triton costs)."""
    async def go():
        fleet, fakes = fleet_of(1)
        await started(fleet)
        fakes[ADDRS[0]].hung = True
        got = await outcomes(fleet, 6)
        state = fleet.endpoints[ADDRS[0]].state
        await fleet.close()
        return got, state, fleet.metrics

    got, state, metrics = asyncio.run(go())
    assert got == ["triton_timeout"] * 6 and state == "ready"
    assert metrics.outliers._value.get() == 0 and metrics.outliers_kept._value.get() == 4


def test_at_most_half_of_the_endpoints_are_out_as_outliers():
    """A fleet slow everywhere is overloaded, not sick: of 3 hung endpoints one is ejected."""
    async def go():
        fleet, fakes = fleet_of(3)
        await started(fleet)
        for f in fakes.values():
            f.hung = True
        await outcomes(fleet, 12, concurrency=3)
        states = sorted(ep.state for ep in fleet.endpoints.values())
        await fleet.close()
        return states

    assert asyncio.run(go()) == ["ejected", "ready", "ready"]


def test_model_errors_are_answers_not_timeouts():
    async def go():
        fleet, fakes = fleet_of(2)
        await started(fleet)
        fleet.endpoints[ADDRS[1]].outstanding = 100     # every call goes to the first
        fakes[ADDRS[0]].fail = TritonError("the model failed")
        got = await outcomes(fleet, 6)
        state = fleet.endpoints[ADDRS[0]].state
        await fleet.close()
        return got, state

    got, state = asyncio.run(go())
    assert got == ["triton_error"] * 6 and state == "ready"


# -- a probe raising what nobody foresaw ----------------------------------------------------------
class OddOnce(FakeBackend):
    """Its readiness answer raises an exception no handler expects, `times` times."""

    def __init__(self, times=1):
        super().__init__(models=("yolo",))
        self.times = times

    async def ready(self, models):
        if self.times > 0:
            self.times -= 1
            raise RuntimeError("an answer nobody foresaw")
        return await super().ready(models)


@pytest.mark.parametrize("when", ["first", "while_ready"])
def test_a_probe_that_raises_is_logged_and_retried_never_the_end_of_the_watch(when, caplog):
    async def go():
        fake = OddOnce(times=1 if when == "first" else 0)
        s = GatewaySettings(triton_grpc=ADDRS[0], health_interval_s=0.05,
                            probe_backoff_max_s=0.1, startup_wait_s=0.2)
        fleet = Fleet(s, Metrics(), connect=lambda _: fake)
        await fleet.start()
        ep = fleet.endpoints[ADDRS[0]]
        if when == "while_ready":
            assert await eventually(lambda: ep.state == "ready", 2.0)
            fake.times = 2
            assert await eventually(lambda: ep.state == "ejected", 2.0)
            assert "RuntimeError" in ep.reason
        assert await eventually(lambda: ep.state == "ready", 3.0), (ep.state, ep.reason)
        await fleet.infer("yolo", FRAME, OUT)
        # still watched: a later failure is still seen
        fake.fail = TritonUnavailable("down", retry_after=1)
        assert await eventually(lambda: ep.state == "ejected", 2.0)
        await fleet.close()
        return fleet.metrics

    with caplog.at_level("DEBUG", logger="visionserve.gateway.fleet"):
        metrics = asyncio.run(go())
    assert metrics.probe_errors._value.get() == (1 if when == "first" else 2)
    tracebacks = [r for r in caplog.records if r.exc_info and "raised RuntimeError" in r.getMessage()]
    assert len(tracebacks) == 1          # the traceback once per kind, not every probe
