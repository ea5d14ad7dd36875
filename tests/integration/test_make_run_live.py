"""`make run` itself (the README's first command): it starts Triton and the gateway on the
ports it is given, answers an image through the gateway, and Ctrl-C (SIGINT to its process
group, as a terminal sends it) stops everything and frees the ports. Bounded: 10 minutes to
become ready (a first start loads every exported model), 60 s to stop."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from contract import REPO_ROOT
from serving.tritonserver import free_port, port_taken
from tests.support.images import noise_jpeg
from tests.support.polling import wait_for
from tests.support.triton import require_triton

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.integration


def test_make_run_starts_answers_and_stops(tmp_path):
    require_triton()
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    ports = {name: free_port() for name in ("HTTP_PORT", "GRPC_PORT", "METRICS_PORT", "GATEWAY_PORT",
                                            "GATEWAY_METRICS_PORT")}
    log = open(tmp_path / "make-run.log", "wb")
    proc = subprocess.Popen(["make", "--no-print-directory", "run", "SKIP_MISSING=1",
                             *(f"{k}={v}" for k, v in ports.items())],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"make run exited {proc.returncode}: "
                                 + (tmp_path / "make-run.log").read_text(errors="replace")[-3000:])
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 600, "make run's gateway ready", every_s=0.5)
        r = httpx.post(url + "/v1/detect", content=noise_jpeg(), headers={"content-type": "image/jpeg"},
                       timeout=60)
        assert r.status_code == 200, r.text
        assert "results" in r.json()
        r = httpx.get(f"http://127.0.0.1:{ports['GATEWAY_METRICS_PORT']}/metrics", timeout=10)
        assert 'visionserve_gateway_requests_total{route="/v1/detect",status="200"}' in r.text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired as exc:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                raise AssertionError("make run did not stop within 60 s of Ctrl-C") from exc
        log.close()
    assert proc.returncode in (0, 130, -signal.SIGINT), proc.returncode   # make dies by the same SIGINT
    wait_for(lambda: not any(port_taken("127.0.0.1", p) for p in ports.values()), 30,
             f"every port of make run free again ({ports})")
