"""Endpoint discovery: a Target resolved to endpoint addresses, now and on a period.

A static target is its own list. `dns:///name:port` asks the system resolver (what a
Kubernetes pod uses: search domains, /etc/hosts) through `loop.getaddrinfo`, which runs
in the default executor: the event loop never blocks on DNS. `dns://HOST:PORT/name:port`
asks that server with dnspython's asyncio resolver (A and AAAA).

A name that does not exist (NXDOMAIN, no records) resolves to NO endpoints: a headless
Service with no ready pod. A failed lookup (timeout, SERVFAIL) is an error: the caller
keeps the endpoints it had, so a DNS hiccup never drops a healthy fleet.
"""
from __future__ import annotations

import asyncio
import logging
import socket

from .target import Target, address

log = logging.getLogger("visionserve.gateway.discovery")
DNS_TIMEOUT_S = 3.0


class DiscoveryError(RuntimeError):
    """The lookup failed (not: the name has no records)."""


async def resolve(target: Target) -> list[str]:
    """The endpoint addresses of `target`, sorted, without duplicates."""
    if not target.dynamic:
        return list(target.addresses)
    if target.dns_server is None:
        hosts = await _system(target.name, target.port)
    else:
        hosts = await _server(target.name, target.dns_server)
    return sorted({address(h, target.port) for h in hosts})


async def _system(name: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(name, port, type=socket.SOCK_STREAM), DNS_TIMEOUT_S)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return []
        raise DiscoveryError(f"resolving {name}: {exc}") from exc
    except asyncio.TimeoutError as exc:
        raise DiscoveryError(f"resolving {name}: no answer in {DNS_TIMEOUT_S:.0f}s") from exc
    return [info[4][0] for info in infos]


async def _server(name: str, server: tuple[str, int]) -> list[str]:
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server[0]]
    resolver.port = server[1]
    resolver.lifetime = DNS_TIMEOUT_S
    hosts: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"resolving {name} {rdtype} at {server[0]}:{server[1]}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        hosts += [r.address for r in answer]
    return hosts


class Discovery:
    """Calls `on_change(addresses)` with the first resolution and whenever the set
    changes; re-resolves every `interval_s` (static targets: once)."""

    def __init__(self, target: Target, interval_s: float, on_change):
        self.target = target
        self.interval_s = interval_s
        self.on_change = on_change
        self.addresses: list[str] | None = None
        self.error: str | None = None   # the last lookup failure, for /readyz

    async def refresh(self) -> None:
        try:
            found = await resolve(self.target)
        except DiscoveryError as exc:
            self.error = str(exc)
            log.warning("keeping %d endpoints: %s", len(self.addresses or ()), exc)
            return
        self.error = None
        if found != self.addresses:
            if self.addresses is not None or not found:
                log.info("Triton endpoints of %s: %s", self.target.text,
                         ", ".join(found) or "none")
            self.addresses = found
            self.on_change(found)

    async def run(self) -> None:
        while True:
            await self.refresh()
            if not self.target.dynamic and self.addresses is not None:
                return
            await asyncio.sleep(self.interval_s)
