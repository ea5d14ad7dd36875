"""The one `triton_grpc` setting, parsed: which Triton endpoints the gateway spreads over.

    127.0.0.1:8001 / triton:8001 / [::1]:8001   one endpoint (a name is resolved by gRPC)
    ipv4:127.0.0.2:8001,127.0.0.3:8001            a static list (gRPC's own syntax)
    ipv6:[::1]:8001,[::2]:8001                    the same for IPv6
    dns:///triton-grpc:8001                       every A/AAAA record is an endpoint,
                                                  re-resolved on a period (system resolver)
    dns://10.0.0.10:53/triton-grpc:8001           the same, asking that DNS server

Pure: no I/O. Anything else is a TargetError naming the accepted forms.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

FORMS = ("host:port", "ipv4:a:port,b:port", "ipv6:[a]:port,[b]:port", "dns:///name:port",
         "dns://DNS_HOST:DNS_PORT/name:port")


class TargetError(ValueError):
    """The triton_grpc setting is not one of the accepted forms."""


@dataclass(frozen=True)
class Target:
    text: str
    addresses: tuple[str, ...] = ()          # static: gRPC addresses ("1.2.3.4:8001", "[::1]:8001")
    name: str = ""                            # dns: the name whose records are the endpoints
    port: int = 0
    dns_server: tuple[str, int] | None = None  # dns://HOST:PORT/: ask this server

    @property
    def dynamic(self) -> bool:
        return bool(self.name)


def parse(text: str) -> Target:
    text = text.strip()
    if text.startswith("dns:"):
        return _dns(text)
    if text.startswith(("ipv4:", "ipv6:")):
        family, _, rest = text.partition(":")
        entries = [e.strip() for e in rest.split(",")]
        if not rest or not all(entries):
            _fail(text, "an empty entry in the list")
        addrs = []
        for entry in entries:
            host, port = _host_port(entry, text)
            ip = _ip(host, text)
            if ip.version != (4 if family == "ipv4" else 6):
                _fail(text, f"{host} is not an {family} address")
            addrs.append(address(str(ip), port))
        return Target(text, addresses=tuple(dict.fromkeys(addrs)))
    if "://" in text or text.startswith(("unix:", "unix-abstract:", "vsock:")):
        _fail(text, "unsupported scheme")
    host, port = _host_port(text, text)
    return Target(text, addresses=(address(host, port),))


def address(host: str, port: int) -> str:
    """The gRPC address of one endpoint: brackets around IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dns(text: str) -> Target:
    rest = text[len("dns:"):]
    if not rest.startswith("//"):
        _fail(text, "expected dns:///name:port or dns://HOST:PORT/name:port")
    authority, slash, name_port = rest[2:].partition("/")
    if not slash or not name_port:
        _fail(text, "no name:port after the authority")
    server = None
    if authority:
        host, port = _host_port(authority, text, default_port=53)
        server = (str(_ip(host, text)), port)
    name, port = _host_port(name_port, text)
    return Target(text, name=name, port=port, dns_server=server)


def _host_port(entry: str, text: str, default_port: int | None = None) -> tuple[str, int]:
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            _fail(text, f"bad IPv6 literal in {entry!r}")
        port_text = rest[1:] if rest else ""
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
    elif ":" not in entry:
        host, port_text = entry, ""
    else:
        _fail(text, f"{entry!r}: put IPv6 addresses in brackets, [::1]:8001")
    if not host:
        _fail(text, f"no host in {entry!r}")
    if not port_text:
        if default_port is None:
            _fail(text, f"no port in {entry!r}")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        _fail(text, f"bad port {port_text!r}")
    return host, int(port_text)


def _ip(host: str, text: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        _fail(text, f"{host!r} is not an IP address")


def _fail(text: str, why: str):
    raise TargetError(f"triton_grpc {text!r}: {why}; accepted forms: {', '.join(FORMS)}")
