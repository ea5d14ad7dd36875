"""A local fleet of real tritonservers on loopback addresses, for fleet tests and benchmarks.

Linux routes all of 127.0.0.0/8 to `lo`, so replicas can listen on 127.0.0.2,
127.0.0.3, ... with the SAME gRPC port, as pods of a headless Service do on their own
IPs. Each replica serves fixed-time stand-ins (serving/standins.py: a known capacity that
does not depend on this machine's cores) from its own repository folder, with its own
HTTP/metrics ports and log file. Restarts reuse the replica's ports.

    with Replicas(tmp, {"mobileclip_image": {"batch_ms": 100}}, ["127.0.0.2", "127.0.0.3"]) as fleet:
        fleet.start_all()
        fleet.address("127.0.0.2")          # "127.0.0.2:<grpc port>"
        fleet.success("127.0.0.2", "mobileclip_image")
"""
from __future__ import annotations

import re
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import standins
from .tritonserver import TritonServer, TritonServerError, free_port, port_taken


def loopback_hosts(n: int, first: int = 2) -> list[str]:
    return [f"127.0.0.{i}" for i in range(first, first + n)]


def shared_port(hosts: list[str], tries: int = 50) -> int:
    """A port free on every one of `hosts`."""
    for _ in range(tries):
        port = free_port(hosts[0])
        if not any(port_taken(h, port) for h in hosts[1:]):
            return port
    raise TritonServerError(f"no port free on all of {hosts}")


class Replicas:
    def __init__(self, root: Path, models: dict[str, dict], hosts: list[str],
                 grpc_port: int | None = None, start_timeout_s: float = 120.0, **server_kw):
        self.root = Path(root)
        self.models = models
        self.grpc_port = grpc_port or shared_port(hosts)
        self.start_timeout_s = start_timeout_s
        self.server_kw = server_kw
        self.servers: dict[str, TritonServer] = {}
        for host in hosts:
            self.add(host)

    def add(self, host: str) -> TritonServer:
        """Declare a replica (not started); its repository is written now."""
        folder = self.root / host
        repo = folder / "repo"
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir(parents=True)
        for model, kw in self.models.items():
            standins.add_fixed_time(repo, model, **kw)
        self.servers[host] = self._server(host, free_port(host), free_port(host))
        return self.servers[host]

    def _server(self, host, http_port, metrics_port) -> TritonServer:
        folder = self.root / host
        n = len(list(folder.glob("triton*.log")))
        return TritonServer(folder / "repo", http_port, self.grpc_port, metrics_port,
                            log_path=folder / f"triton{n or ''}.log", host=host, **self.server_kw)

    def address(self, host: str) -> str:
        return f"{host}:{self.grpc_port}"

    def start(self, host: str) -> TritonServer:
        """Start (or start again, on the same ports) the replica on `host`."""
        self.start_all([host])
        return self.servers[host]

    def start_all(self, hosts: list[str] | None = None) -> None:
        """Launch every replica from this thread (see TritonServer.launch), then wait for
        all of them together."""
        hosts = hosts or list(self.servers)
        for host in hosts:
            old = self.servers[host]
            if old.process is not None:
                raise TritonServerError(f"replica {host} is running")
            self.servers[host] = self._server(host, old.http_port, old.metrics_port).launch()
        try:
            with ThreadPoolExecutor(len(hosts)) as pool:
                list(pool.map(lambda h: self.servers[h].wait_ready(self.start_timeout_s), hosts))
        except BaseException:
            for host in hosts:
                self.servers[host].stop()
            raise

    def kill(self, host: str) -> None:
        self.servers[host].kill()

    def stop(self, host: str) -> None:
        """SIGTERM-like graceful stop (Triton drains in-flight work), waited for."""
        self.servers[host].stop()

    def stop_all(self) -> None:
        """Every replica at once (each drains on its own; one after another took ~2 s each)."""
        servers = list(self.servers.values())
        if servers:
            with ThreadPoolExecutor(len(servers)) as pool:
                list(pool.map(lambda server: server.stop(), servers))

    def success(self, host: str, model: str) -> float:
        """Triton's own count of successful requests for `model` on that replica."""
        return metric(self.servers[host].metrics_url, "nv_inference_request_success", model)

    def __enter__(self) -> "Replicas":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def metric(url: str, name: str, model: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(rf'^{name}\{{model="{re.escape(model)}",version="[^"]*"\}} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else 0.0
