"""The launcher with several servers per host: busy ports refused, readiness confirmed
against its own process, per-instance logs, and nothing left behind by a failed start."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from serving import standins
from serving.tritonserver import TritonServer, TritonServerError, free_port
from tests.integration.conftest import require_triton

pytestmark = pytest.mark.integration
SHM = Path("/dev/shm")
REGION = "triton_python_backend_shm_region_"


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    require_triton()
    root = tmp_path_factory.mktemp("launch")
    repo = standins.write_fixed_time_repository(root / "repo", {"yolo": 0})
    server = TritonServer(repo, free_port(), free_port(), free_port())
    server.start(120)
    try:
        yield server
    finally:
        server.stop()


def test_busy_ports_are_refused_before_starting(running):
    second = TritonServer(running.repository, running.http_port, free_port(), free_port(),
                          log_path=running.log_path.with_name("second.log"))
    with pytest.raises(TritonServerError, match=f"HTTP 127.0.0.1:{running.http_port}"):
        second.start(30)
    assert second.process is None and running.is_ready()


def test_readiness_is_confirmed_against_this_server(running):
    """Whoever answers on the port must carry this server's --id."""
    impostor = TritonServer(running.repository, running.http_port, free_port(), free_port())
    impostor.process = subprocess.Popen(["sleep", "30"])   # "our" process, alive
    try:
        with pytest.raises(TritonServerError, match="another server answers"):
            impostor.wait_ready(10)
    finally:
        impostor.process.kill()
        impostor.process.wait()
    assert running.server_name() == running.server_id


def test_each_instance_logs_to_its_own_file(running):
    assert running.log_path.name == f"triton-127.0.0.1-{running.grpc_port}.log"
    assert "Started GRPCInferenceService" in running.log_path.read_text(errors="replace")


def _regions() -> set[str]:
    return {p.name for p in SHM.glob(REGION + "*")}


def _mapped_by_anyone() -> set[str]:
    found = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            found |= {line.rsplit("/", 1)[-1].removesuffix(" (deleted)")
                      for line in maps.read_text().splitlines() if REGION in line}
        except OSError:
            continue
    return found


def _stubs(tag: str) -> list[str]:
    """pids of python-backend stubs serving models from a folder containing `tag`."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_text()
        except OSError:
            continue
        if "triton_python_backend_stub" in text and tag in text:
            out.append(cmdline.parent.name)
    return out


def test_a_failed_start_leaves_no_stub_and_no_shm_region(tmp_path):
    """tritonserver crashes (SIGKILL) while loading: one model's python-backend stub is
    up (with its /dev/shm region), another still initialising. A crashed tritonserver
    cannot stop its stubs; the launcher must, and remove their regions."""
    import signal
    import threading

    require_triton()
    repo = standins.write_fixed_time_repository(tmp_path / "repo", {"yolo": 0})
    slow = standins.add_fixed_time(repo, "centernet", batch_ms=0)
    (slow / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        print('loading slowly', flush=True); import time; time.sleep(600)\n")
    before = _regions()
    server = TritonServer(repo, free_port(), free_port(), free_port(), log_path=tmp_path / "t.log")

    def crash():
        deadline = time.monotonic() + 60
        while len(_stubs(str(tmp_path))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(server.process.pid, signal.SIGKILL)

    killer = threading.Thread(target=crash)
    server.launch()
    killer.start()
    try:
        with pytest.raises(TritonServerError, match="exited"):
            server.wait_ready(90)
    finally:
        killer.join(70)
        server.stop()
    time.sleep(0.5)
    assert not _stubs(str(tmp_path)), "python-backend stubs outlived their tritonserver"
    leaked = (_regions() - before) - _mapped_by_anyone()
    assert not leaked, leaked
