"""`python -m gateway` as a subprocess on free ports (API and metrics), for `make soak`
and the integration tests. `VISIONSERVE_TEST_GATEWAY_ROOT` runs another checkout's
gateway (e.g. main's, to show a test fails before a fix) under this checkout's tests."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx

from contract import REPO_ROOT
from serving.tritonserver import free_port

from .processes import stop_process

TIMEOUT = httpx.Timeout(120.0, connect=5.0)
GATEWAY_ROOT = os.environ.get("VISIONSERVE_TEST_GATEWAY_ROOT", str(REPO_ROOT))


class Gateway:
    """`python -m gateway` as a subprocess on free ports, stopped with SIGINT.
    Settings are given as VISIONSERVE_GATEWAY_* variables (`**settings`), other
    variables of its environment in `env`."""

    def __init__(self, grpc_url: str, log_path, env: dict | None = None, **settings):
        log_level = settings.pop("log_level", "warning")
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        e = dict(os.environ, PYTHONPATH=GATEWAY_ROOT, **(env or {}),
                 **{f"VISIONSERVE_GATEWAY_{k.upper()}": str(v) for k, v in settings.items()})
        # an older gateway without --metrics-port serves /metrics on its API port
        e["VISIONSERVE_GATEWAY_METRICS_PORT"] = str(self.metrics_port)
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--triton-grpc", grpc_url, "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", log_level],
            cwd=GATEWAY_ROOT, env=e, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=TIMEOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def readiness(self) -> dict:
        """The admin readiness view (the metrics port's /readyz: endpoints' addresses,
        states, reasons); a gateway that predates it listed them on the API's /readyz."""
        r = httpx.get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5)
        if r.headers.get("content-type", "").startswith("application/json"):
            return r.json()
        return self.client.get("/readyz", timeout=5).json()

    def endpoints(self) -> dict[str, str]:
        """{address: state} from the admin readiness view."""
        return {e["address"]: e["state"] for e in self.readiness()["endpoints"]}

    def wait_ready(self, timeout_s=120.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: "
                                   + open(self.log.name, errors="replace").read()[-3000:])
            try:
                if self.client.get("/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"gateway not ready after {timeout_s}s")

    def metrics(self) -> str:
        """The Prometheus text from the metrics port (the API port for a gateway that
        predates it)."""
        try:
            return httpx.get(self.metrics_url, timeout=10).text
        except httpx.TransportError:
            return self.client.get("/metrics").text

    def series(self, name: str) -> dict[tuple, float]:
        """{label values: value} of one visionserve_gateway_* family."""
        out = {}
        for labels, value in re.findall(rf'^visionserve_gateway_{name}\{{([^}}]*)\}} (\S+)$',
                                        self.metrics(), re.M):
            out[tuple(re.findall(r'="([^"]*)"', labels))] = float(value)
        return out

    def log_text(self) -> str:
        self.log.flush()
        return open(self.log.name, errors="replace").read()

    def stop(self):
        self.client.close()
        stop_process(self.proc, wait_s=20)
        self.log.close()
