"""gateway/discovery.py: the `dns:///` target (the system resolver, what a Kubernetes pod
uses), a failed lookup keeping the endpoints, and a name without records meaning none."""
from __future__ import annotations

import asyncio
import socket

import pytest

from gateway import discovery
from gateway.target import parse


def resolve(text: str) -> list[str]:
    return asyncio.run(discovery.resolve(parse(text)))


def test_dns_target_asks_the_system_resolver():
    """dns:///localhost:PORT: /etc/hosts through getaddrinfo, one endpoint per address."""
    got = resolve("dns:///localhost:8001")
    assert "127.0.0.1:8001" in got and got == sorted(set(got)), got


def _failing_getaddrinfo(errno: int):
    def getaddrinfo(*args, **kwargs):
        raise socket.gaierror(errno, "stubbed")
    return getaddrinfo


def test_a_name_without_records_has_no_endpoints(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", _failing_getaddrinfo(socket.EAI_NONAME))
    assert resolve("dns:///triton-grpc.default.svc:8001") == []


@pytest.mark.parametrize("errno", [socket.EAI_AGAIN, socket.EAI_FAIL])
def test_a_failed_lookup_is_an_error_not_an_empty_fleet(monkeypatch, errno):
    monkeypatch.setattr(socket, "getaddrinfo", _failing_getaddrinfo(errno))
    with pytest.raises(discovery.DiscoveryError, match="triton-grpc"):
        resolve("dns:///triton-grpc:8001")


def test_discovery_keeps_its_endpoints_through_a_failed_lookup_and_drops_them_on_none(monkeypatch):
    """What the gateway's fleet sees through on_change: the first answer, nothing while
    lookups fail (the error kept for /readyz), then an empty list once the name has no
    records, then the endpoints again."""
    answers = {"now": [("10.0.0.1", 8001), ("10.0.0.2", 8001)]}

    def getaddrinfo(host, port, *args, **kwargs):
        now = answers["now"]
        if isinstance(now, int):
            raise socket.gaierror(now, "stubbed")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, p)) for ip, p in now]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    seen: list[list[str]] = []
    d = discovery.Discovery(parse("dns:///triton:8001"), 1.0, seen.append)

    async def go():
        await d.refresh()
        answers["now"] = socket.EAI_AGAIN           # the resolver is down
        await d.refresh()
        kept, error = list(d.addresses), d.error
        answers["now"] = socket.EAI_NONAME          # the Service has no ready pod
        await d.refresh()
        gone = list(d.addresses)
        answers["now"] = [("10.0.0.3", 8001)]
        await d.refresh()
        return kept, error, gone

    kept, error, gone = asyncio.run(go())
    assert kept == ["10.0.0.1:8001", "10.0.0.2:8001"] and "triton" in error
    assert gone == [] and d.error is None
    assert seen == [["10.0.0.1:8001", "10.0.0.2:8001"], [], ["10.0.0.3:8001"]]
