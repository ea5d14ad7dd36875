"""`python -m gateway` as a real process for integration tests and benchmarks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from serving.contract import REPO_ROOT
from serving.tritonserver import free_port

TIMEOUT = httpx.Timeout(120.0, connect=5.0)


class Gateway:
    """`python -m gateway` as a subprocess on a free port, stopped with SIGINT."""

    def __init__(self, grpc_url: str, log_path, log_level: str = "warning", **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        e = dict(os.environ, PYTHONPATH=str(REPO_ROOT),
                 **{f"VISIONSERVE_GATEWAY_{k.upper()}": str(v) for k, v in env.items()})
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--triton-grpc", grpc_url, "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", log_level],
            cwd=REPO_ROOT, env=e, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=TIMEOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def endpoints(self) -> dict[str, str]:
        """{address: state} from /readyz."""
        return {e["address"]: e["state"] for e in self.client.get("/readyz", timeout=5).json()["endpoints"]}

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

    def stop(self):
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
