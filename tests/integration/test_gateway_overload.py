"""The gateway under overload, as real processes: the shared tritonserver of fixed-time
stand-ins (tests/support/triton.STANDINS: capacity known, whatever the CPU) and
`python -m gateway`, driven by the raw client of perf/openloop.py. Latencies are the
gateway's own (its request_duration_seconds histogram, by status): what the gateway did,
not how late a client on the same 2 cores saw it.

4 x C for OVERLOAD_S (10 s here, 60 s in make test-load): accepted p99 <= 2 x their p99 at
0.7 x C (both over what finished while arrivals ran: Triton's drain after them is its own,
see _while_arriving), >= 99.8% of refusals (all but two at least) a 429/503 within 50 ms
with Retry-After, no other error, RSS under the budget + 200 MB.
"""
from __future__ import annotations

import asyncio
import math
import os

import pytest

from gateway.settings import GatewaySettings
from perf import openloop
from tests.support import triton as triton_support
from tests.support.gateway import delta, histogram, quantile, send, share_within, statuses
from tests.support.images import noise_jpeg

pytest.importorskip("httpx")
from perf.gatewayproc import Gateway  # noqa: E402  (needs httpx)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# mobileclip_image: 100 ms per batch of at most 4, one instance: C = 40 requests/s. Its
# 256x256 frames (196 KB) keep Triton's own per-request copying small beside the fixed
# batch time.
BATCH_MS, MAX_BATCH = 100, 4
C = MAX_BATCH / (BATCH_MS / 1000)
BUDGET = GatewaySettings.model_fields["memory_budget_bytes"].default    # the gateway's default
# short in make test, full length in make test-load (mk/test.mk)
OVERLOAD_S = float(os.environ.get("VISIONSERVE_OVERLOAD_S", 10))
# the stand-in's settings (tests/support/triton.STANDINS) these figures are derived from
assert triton_support.STANDINS["mobileclip_image"][1]["batch_ms"] == BATCH_MS
assert triton_support.STANDINS["mobileclip_image"][1]["max_batch_size"] == MAX_BATCH
TINY = noise_jpeg(64, 48)      # the gateway's own CPU stays small beside C

ROUTE = "/v1/embed/image"


def _latency(gw: Gateway) -> dict[str, dict[float, float]]:
    """The gateway's own latency histogram of ROUTE, by status."""
    return {status: histogram(gw, "request_duration_seconds", route=ROUTE, status=status)
            for status in ("200", "429", "503")}


def _merged(*hists: dict[float, float]) -> dict[float, float]:
    out: dict[float, float] = {}
    for h in hists:
        for le, n in h.items():
            out[le] = out.get(le, 0.0) + n
    return out


async def _while_arriving(gw: Gateway, rate: float, seconds: float, seed: int):
    """An open-loop phase -> (its records, the gateway's histograms when its arrivals
    stopped). Triton 2.51's dynamic batcher can leave a queued backlog waiting up to
    ~0.5 s once no new request arrives (probed: 13 requests at once on the 100 ms
    stand-in, batches of 4, the last done at 0.8 s instead of 0.4 s; with or without a
    queue timeout), so the requests still in flight when a phase's arrivals stop end
    late by Triton's doing, and a 1 s queue timeout can turn one into a 429. Latency is
    judged on what the gateway finished while the load ran."""
    task = asyncio.ensure_future(openloop.open_loop(lambda: send(gw, ROUTE, TINY), rate, seconds, seed))
    await asyncio.sleep(seconds)
    snapshot = await asyncio.to_thread(_latency, gw)
    return await task, snapshot


@pytest.mark.load
def test_overload_sheds_fast_and_keeps_accepted_latency(start_gateway):
    """0.7 x C, then 4 x C for OVERLOAD_S. The defects it catches: a gateway that queues
    instead of shedding (accepted p99 grows with the storm's length, far past 2 x the calm
    one within seconds: C is 40/s, a 4 x C backlog adds 3 s per second of storm), one that
    refuses slowly (a refusal that waited for memory, a slot or Triton) or without
    Retry-After, one that stops feeding Triton, one that grows past its memory budget."""
    gw = start_gateway()
    asyncio.run(openloop.open_loop(lambda: send(gw, ROUTE, TINY), C / 2, 3, 0))  # warm up, learn the capacity
    h0 = _latency(gw)
    calm, s1 = asyncio.run(_while_arriving(gw, 0.7 * C, 8, 1))
    h1 = _latency(gw)

    async def storm_phase():
        with openloop.Sampler(gw.pid) as sampler:
            records, snapshot = await _while_arriving(gw, 4 * C, OVERLOAD_S, 2)
        return records, snapshot, sampler.peak_rss

    storm, s2, peak_rss = asyncio.run(storm_phase())
    h2 = _latency(gw)
    # latency: what finished while arrivals ran (s1, s2); counts: everything (h2)
    calm_ok, storm_ok = delta(s1["200"], h0["200"]), delta(s2["200"], h1["200"])
    refused_h = delta(_merged(s2["429"], s2["503"]), _merged(h1["429"], h1["503"]))
    refused_all = delta(_merged(h2["429"], h2["503"]), _merged(h1["429"], h1["503"]))
    p99_calm, p99_storm = quantile(calm_ok, 0.99), quantile(storm_ok, 0.99)
    ok_calm = [r for r in calm if r.status == 200]
    ok_storm = [r for r in storm if r.status == 200]
    refused = [r for r in storm if r.status != 200]
    fast = share_within(refused_h, 0.05)
    print(f"\n(gateway's histogram, while arrivals ran) 0.7xC: {calm_ok.get(math.inf, 0):.0f} ok, "
          f"p99 {p99_calm * 1e3:.0f} ms; 4xC {OVERLOAD_S:g} s: {storm_ok.get(math.inf, 0):.0f} ok, "
          f"p99 {p99_storm * 1e3:.0f} ms, {refused_h.get(math.inf, 0):.0f} refused, {fast:.2%} of "
          f"them within 50 ms; peak RSS {peak_rss / MiB:.0f} MiB")
    for name, recs in (("0.7xC", calm), ("4xC", storm)):
        by: dict = {}
        for r in recs:
            by.setdefault((r.status, r.code), []).append(r.first_s or 0)
        print(f"(client's view, drain included) {name}", ", ".join(
            f"{len(v)} x {s} {c} (slowest {max(v) * 1e3:.0f} ms)"
            for (s, c), v in sorted(by.items(), key=lambda kv: -len(kv[1]))))
    # at 0.7 x C Poisson bursts beyond one batch waiting are shed too (the stand-in's batch
    # time is half its queue timeout): most are served
    assert len(ok_calm) >= 0.8 * len(calm), "requests refused at 0.7 x C"
    assert len(ok_storm) >= 0.8 * C * OVERLOAD_S, "the gateway did not keep Triton busy"
    assert p99_storm <= 2 * p99_calm, (p99_storm, p99_calm)
    assert {r.status for r in refused} <= {429, 503}, {r.status for r in refused}
    assert refused and all("retry-after" in r.headers for r in refused)
    assert refused_all.get(math.inf, 0) == len(refused), (refused_all, len(refused))
    # the gateway's own time to refuse: at most 0.2% over 50 ms, at least 2 allowed. The
    # slow refusals once seen in make test (ci8: 1 of 713, ci9: 2 of 1,203 at 1-2.5 s,
    # both at one moment) fit Triton's drain above: a 429 of its 1 s queue timeout. A
    # gateway that refuses slowly (waiting for memory, a slot or Triton) does it to many.
    # The storm stays 10 s: in 6 s its first second's backlog dominated the accepted p99
    # (1,360 ms vs 497 ms in 10 s storms, same tree).
    n = refused_h.get(math.inf, 0)
    slow = n - refused_h.get(0.05, 0)
    assert slow <= max(2, 0.002 * n), f"{slow} of {n:.0f} refusals took the gateway over 50 ms: {refused_h}"
    assert not [r.error for r in calm + storm if r.status is None]
    assert set(statuses(gw)) <= {"200", "429", "503"}, statuses(gw)
    assert peak_rss <= BUDGET + 200 * MiB
