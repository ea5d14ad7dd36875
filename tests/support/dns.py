"""A DNS server on loopback standing for a Kubernetes headless Service: the test sets
which A records a name has (PyPI dnslib, in a thread of the test process)."""
from __future__ import annotations

import threading

from serving.tritonserver import free_port


class DnsStub:
    def __init__(self, ttl: int = 5):
        from dnslib import QTYPE, RCODE, RR, A
        from dnslib.server import BaseResolver, DNSLogger, DNSServer

        stub = self
        self.records: dict[str, list[str]] = {}
        self.failing = False                    # answer SERVFAIL to everything (a DNS outage)
        self.lock = threading.Lock()
        self.queries = 0

        class Resolver(BaseResolver):
            def resolve(self, request, handler):
                reply = request.reply()
                name = str(request.q.qname).rstrip(".")
                with stub.lock:
                    stub.queries += 1
                    ips = stub.records.get(name)
                    failing = stub.failing
                if failing:
                    reply.header.rcode = RCODE.SERVFAIL
                elif ips is None:
                    reply.header.rcode = RCODE.NXDOMAIN
                elif request.q.qtype == QTYPE.A:
                    for ip in ips:
                        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=ttl))
                return reply   # AAAA: no records (NOERROR, empty)

        self.port = free_port()
        self.server = DNSServer(Resolver(), port=self.port, address="127.0.0.1", tcp=False,
                                logger=DNSLogger(logf=lambda *_: None))
        self.server.start_thread()

    def set(self, name: str, ips: list[str]) -> None:
        with self.lock:
            self.records[name] = list(ips)

    def remove(self, name: str) -> None:
        """The name no longer exists (NXDOMAIN): a headless Service with no ready pod."""
        with self.lock:
            self.records.pop(name, None)

    def fail(self, failing: bool = True) -> None:
        with self.lock:
            self.failing = failing

    def target(self, name: str, port: int) -> str:
        """The gateway's triton_grpc for `name:port` asked of this server."""
        return f"dns://127.0.0.1:{self.port}/{name}:{port}"

    def stop(self) -> None:
        self.server.stop()
