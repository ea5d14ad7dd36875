"""The gateway process's life against the shared stand-in Triton: it finishes the requests
in flight when it is told to stop (exit 0, its shared memory unlinked and unregistered),
it finds Triton through `dns:///` (the system resolver, as in a Kubernetes pod), it keeps
its endpoints through a DNS outage and drops them when the name has no records."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.support.gateway import gauge, send
from tests.support.images import noise_jpeg
from tests.support.polling import eventually, wait_for

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.integration
SLOW = "/v1/detect?model=centernet"      # the stand-in's 400 ms batches of at most 4
BODY = noise_jpeg()


def _post(gw, path=SLOW):
    return send(gw, path, BODY, timeout_s=30)


def _shm_files(pid: int) -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f.startswith(f"visionserve_gw_{pid}_")]


def _triton_regions(server) -> list[str]:
    import tritonclient.grpc as grpcclient

    from serving.tritonserver import GRPC_ADMIN_METADATA

    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        status = c.get_system_shared_memory_status(headers={GRPC_ADMIN_METADATA: server.admin_key},
                                                   as_json=True)
    finally:
        c.close()
    return sorted(status.get("regions", {}))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_answers_the_requests_in_flight_and_cleans_up(standin, gateways, sig):
    """SIGTERM (Kubernetes) or SIGINT (Ctrl-C) while 4 requests are in Triton: all 4 are
    answered 200, the process exits 0, and its shared-memory slots are gone from /dev/shm
    and from Triton's registrations."""
    gw = gateways.start(standin.grpc_url, shared_memory="on", triton_admin_key=standin.admin_key)
    before = set(_triton_regions(standin))
    pid = gw.pid

    async def run():
        calls = [asyncio.ensure_future(_post(gw)) for _ in range(4)]
        busy = await eventually(lambda: gauge(gw, "in_flight_requests") == 4, 10)
        assert busy, "the 4 requests never were in flight together"
        assert _shm_files(pid), "no shared-memory slot in use: nothing to clean up"
        gw.proc.send_signal(sig)
        return await asyncio.gather(*calls)

    records = asyncio.run(run())
    assert [r.status for r in records] == [200] * 4, [(r.status, r.error, r.body[:200]) for r in records]
    assert gw.proc.wait(30) == 0, gw.log_text()[-2000:]
    assert not _shm_files(pid), _shm_files(pid)
    assert not [r for r in _triton_regions(standin) if r not in before and f"_{pid}_" in r]
    assert "Traceback" not in gw.log_text()


def test_a_dns_target_through_the_system_resolver(standin, gateways):
    """dns:///localhost:PORT (what k8s/ configures, with the Service's name): every address
    localhost resolves to is an endpoint; the ones Triton listens on are ready and serve."""
    gw = gateways.start(f"dns:///localhost:{standin.grpc_port}")
    endpoints = gw.endpoints()
    assert endpoints.get(f"127.0.0.1:{standin.grpc_port}") == "ready", endpoints
    r = gw.client.post("/v1/detect", content=BODY, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text


def test_a_dns_outage_keeps_the_endpoints_and_no_records_drops_them(standin, gateways):
    """A DNS server on loopback stands for the cluster's: while it fails (SERVFAIL) the
    gateway keeps serving on the endpoints it had, and says why on /readyz; once the name
    has no records (a Service with no ready pod) it has no endpoints and answers 503; when
    the records return, it serves again. Discovery every 0.5 s (its setting)."""
    pytest.importorskip("dnslib", reason="dnslib (the `test` extra) stands in for the cluster's DNS")
    from tests.support.dns import DnsStub

    dns = DnsStub()
    try:
        dns.set("triton.test", ["127.0.0.1"])
        gw = gateways.start(dns.target("triton.test", standin.grpc_port), discovery_interval_s=0.5)
        address = f"127.0.0.1:{standin.grpc_port}"
        assert gw.endpoints() == {address: "ready"}

        def post():
            return gw.client.post("/v1/detect", content=BODY, headers={"content-type": "image/jpeg"})

        dns.fail()
        queries = dns.queries
        wait_for(lambda: dns.queries >= queries + 3, 15, "three failed lookups")
        assert gw.endpoints() == {address: "ready"}
        assert post().status_code == 200
        dns.fail(False)
        dns.remove("triton.test")
        wait_for(lambda: gw.endpoints() == {}, 15, "the endpoints dropped (no records)")
        r = post()
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert gw.client.get("/readyz").status_code == 503
        dns.set("triton.test", ["127.0.0.1"])
        wait_for(lambda: gw.endpoints() == {address: "ready"}, 15, "the endpoint back and ready")
        assert post().status_code == 200
    finally:
        dns.stop()
