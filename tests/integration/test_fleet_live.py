"""Several real tritonservers behind real gateways, on loopback (issue 11).

Replicas listen on 127.0.0.2, 127.0.0.3, ... with one shared gRPC port (as pods behind a
headless Service) and serve a fixed-time stand-in of mobileclip_image (100 ms per batch,
no CPU: a replica's capacity is set, not this machine's cores). A dnslib server on
loopback is the headless Service: the tests edit its A records. Per-replica service is
Triton's own `nv_inference_request_success`. Every process is stopped, even on failure.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import contract
from serving.replicas import Replicas, loopback_hosts
from tests.support import triton as triton_support
from tests.support.gateway import GatewayFactory
from tests.support.images import flat_jpeg
from tests.support.load import ClosedLoop
from tests.support.polling import settled, wait_for

httpx = pytest.importorskip("httpx")
pytest.importorskip("dnslib", reason="dnslib (the `test` extra) stands in for the headless Service")
pytestmark = pytest.mark.integration
# The gateways' discovery period (their `discovery_interval_s` setting): 1 s in make test,
# the default 15 s in make test-load (VISIONSERVE_FLEET_DISCOVERY_S). A replica joins and
# leaves within two periods (plus its probe) either way.
DISCOVERY_S = float(os.environ.get("VISIONSERVE_FLEET_DISCOVERY_S", 1))
# How many replicas the rolling restart takes down in turn: one in make test (~17 s: its
# drain, start-up and rejoin, under load), all three in make test-load
# (VISIONSERVE_ROLLING_RESTARTS). Each restart is the same sequence; the second and third
# add time, not a new defect.
ROLLING_RESTARTS = int(os.environ.get("VISIONSERVE_ROLLING_RESTARTS", 1))

MODEL, ROUTE = "mobileclip_image", "/v1/embed/image"
NAME = "triton.fleet.test"
# a queue that holds requests 2 s (the committed 200 ms sheds with 429 when this shared
# 2-core machine delays the stand-in's Python): these tests are about replicas, not shedding
STANDIN = {MODEL: {"batch_ms": 100, "queue_timeout_us": 2_000_000}}
WORKERS = 4   # closed-loop clients per gateway


def small_jpeg() -> bytes:
    return flat_jpeg(96, 64, 120)


def closed_loop(gateways) -> ClosedLoop:
    """WORKERS closed-loop clients per gateway posting one small image until stopped."""
    return ClosedLoop([gw.url for gw in gateways], ROUTE, small_jpeg(), WORKERS)


class Fleet:
    def __init__(self, replicas: Replicas, dns, gateways, members):
        self.replicas, self.dns, self.gateways, self.members = replicas, dns, gateways, members

    def publish(self, members):
        self.members = list(members)
        self.dns.set(NAME, self.members)

    def served(self) -> dict[str, float]:
        return {h: self.replicas.success(h, MODEL) for h in self.members}

    def all_ready(self, members=None) -> bool:
        want = {self.replicas.address(h) for h in members or self.members}
        return all({a for a, s in gw.endpoints().items() if s == "ready"} == want
                   for gw in self.gateways)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    triton_support.require_triton()
    from tests.support.dns import DnsStub

    root = tmp_path_factory.mktemp("fleet")
    hosts = loopback_hosts(4)           # the 4th joins in the discovery test
    replicas = Replicas(root, STANDIN, hosts)
    dns, factory = DnsStub(), GatewayFactory(root)
    try:
        replicas.start_all(hosts[:3])
        dns.set(NAME, hosts[:3])
        gateways = [factory.spawn(dns.target(NAME, replicas.grpc_port), log_level="info",
                                  discovery_interval_s=DISCOVERY_S) for _ in range(2)]
        f = Fleet(replicas, dns, gateways, hosts[:3])
        for gw in gateways:
            gw.wait_ready(60)
        wait_for(f.all_ready, 30, "both gateways see the 3 replicas ready")
        yield f
    finally:
        factory.stop_all()
        replicas.stop_all()
        dns.stop()


def test_spread_over_replicas_from_two_gateways(fleet):
    before = fleet.served()
    with closed_loop(fleet.gateways) as load:
        wait_for(lambda: len(load.results) >= 300, 30, "300 requests answered")
    after = fleet.served()
    served = {h: after[h] - before[h] for h in fleet.members}
    total = sum(served.values())
    assert not load.failures(), load.failures()[:5]
    assert total >= 0.95 * len(load.results), (served, len(load.results))
    for host, n in served.items():
        assert abs(n / total - 1 / 3) <= 0.10, f"{host} served {n / total:.1%}: {served}"


@pytest.mark.parametrize("balancer", ["round_robin", "pick_first"])
def test_grpc_own_balancers_over_a_static_list(fleet, gateways, balancer):
    """balancer=round_robin / pick_first: one gRPC channel over ipv4:a,b,c with gRPC's own
    policy (behind a mesh): round_robin spreads evenly, pick_first sends everything to one
    replica. Triton's own counts say where the requests went."""
    target = "ipv4:" + ",".join(fleet.replicas.address(h) for h in fleet.members)
    gw = gateways.start(target, balancer=balancer)
    before = fleet.served()
    with closed_loop([gw]) as load:
        wait_for(lambda: len(load.results) >= 120, 30, "120 requests answered")
    assert not load.failures(), load.failures()[:5]
    got = {h: fleet.replicas.success(h, MODEL) - before[h] for h in fleet.members}
    total = sum(got.values())
    assert total >= len(load.results), got
    shares = sorted(n / total for n in got.values())
    if balancer == "round_robin":
        assert shares[0] >= 1 / 3 - 0.1, got
    else:
        assert shares[-1] == 1.0, got


@pytest.mark.load
def test_discovery_adds_and_drops_replicas(fleet):
    """At the gateways' discovery period P (DISCOVERY_S): a replica added to DNS serves
    within 2 P + 15 s (a re-resolve, then its first probe), a removed one is dropped by both
    gateways within 2 P + 15 s and then gets nothing."""
    new, gone = loopback_hosts(4)[3], fleet.members[0]
    bound = 2 * DISCOVERY_S + 15
    fleet.replicas.start(new)
    with closed_loop(fleet.gateways) as load:
        before = fleet.replicas.success(new, MODEL)
        fleet.publish(fleet.members + [new])
        joined = wait_for(lambda: fleet.replicas.success(new, MODEL) > before, bound,
                          "the added replica serving requests")
        fleet.publish([h for h in fleet.members if h != gone])
        address = fleet.replicas.address(gone)
        dropped = wait_for(lambda: all(address not in gw.endpoints() for gw in fleet.gateways),
                           bound, "both gateways dropping the removed replica")
        # calls already in flight there finish (by design); then its count stays put while
        # the other replicas serve on
        count = settled(lambda: fleet.replicas.success(gone, MODEL), quiet_s=1.0)
        others = {h: fleet.replicas.success(h, MODEL) for h in fleet.members}
        wait_for(lambda: all(fleet.replicas.success(h, MODEL) > others[h] + 10 for h in fleet.members),
                 30, "the remaining replicas serving 10 more each")
        assert fleet.replicas.success(gone, MODEL) == count, "the removed replica still serves"
    assert not load.failures(), load.failures()[:5]
    fleet.replicas.stop(gone)
    print(f"joined after {joined:.1f}s, dropped after {dropped:.1f}s")


def test_failover_when_a_replica_is_killed(fleet):
    victim = fleet.members[0]
    with closed_loop(fleet.gateways) as load:
        wait_for(lambda: len(load.results) >= 50, 30, "50 requests answered before the kill")
        killed_at = time.monotonic()
        fleet.replicas.kill(victim)                  # SIGKILL: a crash
        n = len(load.results)
        wait_for(lambda: len(load.results) >= n + 100, 30, "100 requests answered after the kill")
        after_kill = len(load.results) - n
        fleet.replicas.start(victim)                 # back on the same address and ports
        count = fleet.replicas.success(victim, MODEL)
        wait_for(lambda: fleet.replicas.success(victim, MODEL) > count, 30,
                 "the restarted replica serving again")
    failed = load.failures()
    # only requests already executing on the killed replica may fail (retries catch them)
    assert not load.failures(since=killed_at + 0.01), load.failures(killed_at + 0.01)[:5]
    assert len(failed) <= 0.005 * len(load.results), (len(failed), len(load.results))
    assert after_kill > 0


def test_rolling_restart_has_no_5xx(fleet):
    """ROLLING_RESTARTS replicas in turn: SIGTERM (Triton finishes what it runs, refuses
    new work, exits), then started again; both gateways keep answering."""
    with closed_loop(fleet.gateways) as load:
        for host in list(fleet.members)[:ROLLING_RESTARTS]:
            server = fleet.replicas.servers[host]
            server.terminate()
            server.stop()                            # waits for the drain and the exit
            fleet.replicas.start(host)
            wait_for(fleet.all_ready, 30, f"{host} ready again in both gateways")
        n = len(load.results)
        wait_for(lambda: len(load.results) >= n + 20, 30, "20 more requests answered")
    statuses = [r[2] for r in load.results]
    assert len(statuses) > 50
    assert not [s for s in statuses if s >= 500 or s == 0], load.failures()[:5]


def test_gateway_starts_before_any_triton(tmp_path, gateways):
    triton_support.require_triton()
    (host,) = loopback_hosts(1, first=9)
    with Replicas(tmp_path, STANDIN, [host]) as replicas:
        t0 = time.monotonic()
        gw = gateways.spawn(replicas.address(host), log_level="info")
        wait_for(lambda: _status(gw, "/healthz") == 200, 15, "/healthz answering")
        assert time.monotonic() - t0 < 15
        r = gw.client.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "no Triton endpoint is ready" in r.json()["reason"], r.json()
        assert gw.client.post(ROUTE, content=small_jpeg(),
                              headers={"content-type": "image/jpeg"}).status_code == 503
        replicas.start(host)
        wait_for(lambda: _status(gw, "/readyz") == 200, 30, "/readyz 200 once Triton is up")
        assert gw.client.post(ROUTE, content=small_jpeg(),
                              headers={"content-type": "image/jpeg"}).status_code == 200
        assert gw.alive()


def test_an_expired_request_is_not_executed(tmp_path, gateways):
    """One instance, one request at a time, 1.5 s each. Two requests straight to Triton:
    one executes, one waits (Triton's own pending count says so: the instance is busy,
    whichever came first). Then a request through a gateway with a 0.5 s deadline waits
    in Triton's queue past its deadline. The model's own queue timeout is 10 s here, so
    only the gateway's deadline (gRPC deadline and Triton's per-request timeout) can keep
    it from running: Triton executes the two direct requests, and not the gateway's."""
    import tritonclient.grpc as grpcclient

    triton_support.require_triton()
    (host,) = loopback_hosts(1, first=10)
    standin = {"batch_ms": 1500, "max_batch_size": 1, "queue_timeout_us": 10_000_000}
    with Replicas(tmp_path, {MODEL: standin}, [host]) as replicas:
        server = replicas.start(host)
        gw = gateways.start(replicas.address(host), ready_s=60, triton_timeout_s=0.5)
        before = triton_support.stats(server, MODEL)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        spec = contract.load(MODEL).inputs[0]
        inp = grpcclient.InferInput(spec.name, [1, *spec.dims], "UINT8")
        inp.set_data_from_numpy(np.zeros((1, *spec.dims), np.uint8))
        direct = [threading.Thread(target=client.infer, args=(MODEL, [inp])) for _ in range(2)]
        try:
            for t in direct:
                t.start()
            wait_for(lambda: triton_support.pending(server, MODEL) == 1, 10,
                     "one direct request executing and one queued")
            r = gw.client.post(ROUTE, content=small_jpeg(), headers={"content-type": "image/jpeg"})
            assert r.status_code == 504, r.text
        finally:
            for t in direct:
                t.join(10)
            client.close()
        wait_for(lambda: triton_support.pending(server, MODEL) == 0, 10, "Triton's queue empty")
        after = settled(lambda: triton_support.stats(server, MODEL), quiet_s=0.5)
        executions = after["execution_count"] - before["execution_count"]
        assert executions == 2, f"{executions} executions for 2 direct requests: the expired request ran"
        assert after["fail"] - before["fail"] >= 1


def _status(gw, path) -> int | None:
    try:
        return gw.client.get(path, timeout=2).status_code
    except httpx.TransportError:
        return None
