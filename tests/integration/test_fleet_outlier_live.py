"""A Triton that hangs but still answers its health checks (issue 20), with real processes.

Two tritonservers on 127.0.0.x serve a fixed-time stand-in of mobileclip_image whose time
per batch is read from a file in its model folder while it executes
(pipelines/fixed_time.py `batch_ms_file`): writing a large number there makes one replica's
executions hang while Triton itself keeps answering ServerLive / ModelReady, as a stuck
GPU kernel leaves it. No queue timeout: queued calls wait for the gateway's deadline.
One gateway in front (least_outstanding, 1 s deadline) under closed-loop load.

The hung replica must be ejected after a bounded number of 504s, the traffic must move to
the other one with no further failure, and the replica must come back (a real probe call
answered) once its executions recover. Before outlier ejection the gateway kept it ready
for good (its health passed) and answered a share of the requests 504 for as long as the
hang lasted.
"""
from __future__ import annotations

import time
import urllib.request

import pytest

from serving.replicas import Replicas, loopback_hosts
from tests.support import triton as triton_support
from tests.support.gateway import gauge
from tests.support.images import flat_jpeg
from tests.support.load import ClosedLoop
from tests.support.polling import wait_for

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.integration

MODEL, ROUTE = "mobileclip_image", "/v1/embed/image"
DEADLINE_S = 1.0
HANG_MS = 600_000
STANDIN = {MODEL: {"batch_ms": 20, "queue_timeout_us": 0, "batch_ms_file": "batch_ms"}}
WORKERS = 4


def closed_loop(url: str) -> ClosedLoop:
    return ClosedLoop([url], ROUTE, flat_jpeg(96, 64, 120), WORKERS)


def model_ready(server) -> bool:
    """Triton's own health answer for the model (what the gateway's probe asks)."""
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{MODEL}/ready",
                                    timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def ejections(gw) -> float:
    return gauge(gw, "triton_outlier_ejections_total")


def test_a_hung_but_healthy_replica_is_ejected_and_probed_back(tmp_path, gateways):
    triton_support.require_triton()
    hung, good = loopback_hosts(2, first=20)
    with Replicas(tmp_path, STANDIN, [hung, good]) as replicas:
        replicas.start_all()
        hang_file = tmp_path / hung / "repo" / MODEL / "batch_ms"
        target = "ipv4:" + ",".join(replicas.address(h) for h in (hung, good))
        gw = gateways.start(target, ready_s=60, log_level="info", triton_timeout_s=DEADLINE_S,
                            health_interval_s=0.2, probe_backoff_max_s=0.5)
        address = replicas.address(hung)
        with closed_loop(gw.url) as load:
            wait_for(lambda: load.count(status=200) >= 40, 30, "40 requests answered")
            assert not load.failures(), load.failures()[:5]
            served_before = replicas.success(hung, MODEL)
            assert served_before > 0, "the replica to hang served nothing before"

            hang_file.write_text(str(HANG_MS))              # its executions hang from now
            hung_at = time.monotonic()
            # its health checks keep passing: only its calls say it is sick
            assert model_ready(replicas.servers[hung])
            took = wait_for(lambda: ejections(gw) >= 1, 6 * DEADLINE_S + 10,
                            "the hung replica ejected")
            ejected_at = time.monotonic()
            cost = load.count(status=504)
            assert gw.endpoints()[address] == "ejected"
            # after the calls that were already in flight there ran out (one deadline):
            # no failure, the other replica serves everything
            settled_at = ejected_at + DEADLINE_S + 0.5
            wait_for(lambda: load.count(since=settled_at, status=200) >= 60, 30,
                     "60 requests answered after the ejection")
            assert not load.failures(since=settled_at), load.failures(settled_at)[:5]
            assert model_ready(replicas.servers[hung])           # healthy all along

            hang_file.write_text("20")                      # it recovers
            recovered_at = time.monotonic()
            back = wait_for(lambda: gw.endpoints()[address] == "ready", 15,
                            "the recovered replica ready again")
            count = replicas.success(hung, MODEL)
            wait_for(lambda: replicas.success(hung, MODEL) > count + 5, 15,
                     "the recovered replica serving again")
        assert not load.failures(since=settled_at), load.failures(settled_at)[:5]
        assert ejections(gw) == 1
        # every failure is a 504 of a call that was on the hung replica
        assert {r[2] for r in load.failures()} <= {504}, load.failures()[:5]
        print(f"hung replica ejected {took:.1f} s after the hang ({cost} x 504 before it was "
              f"out, {load.count(status=504)} in all); ready again {back:.1f} s after it "
              f"recovered; {load.count()} requests, {load.count(since=hung_at)} since the hang")
        assert cost <= 2 * WORKERS + 3, f"{cost} requests failed before the ejection"
        assert recovered_at > hung_at
