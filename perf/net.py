"""Addresses: benchmarks talk to loopback only (no load tests against someone's server)."""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from .errors import UsageError


def host_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    return parts.hostname or "", parts.port


def require_loopback(url: str) -> str:
    """`url` unchanged if its host resolves only to loopback addresses; UsageError otherwise."""
    host, _ = host_port(url)
    if not host:
        raise UsageError(f"no host in {url!r}")
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve {host!r} in {url!r}: {exc}") from exc
    bad = [a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if bad:
        raise UsageError(f"{url!r} resolves to non-loopback {', '.join(sorted(bad))}: the benchmarks only "
                         "load servers on this machine (127.0.0.1 / ::1)")
    return url


def grpc_target(url: str) -> str:
    """'grpc://127.0.0.1:8001' or '127.0.0.1:8001' -> '127.0.0.1:8001' (tritonclient's form)."""
    return url.split("://", 1)[1] if "://" in url else url
