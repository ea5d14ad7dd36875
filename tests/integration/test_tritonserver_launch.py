"""The launcher with several servers per host: busy ports refused, readiness confirmed
against its own process, per-instance logs, and nothing left behind by a failed start."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from serving import standins
from contract import REPO_ROOT
from serving.tritonserver import TritonServer, TritonServerError, free_port
from tests.support.polling import wait_for
from tests.support.triton import require_triton

pytestmark = pytest.mark.integration
SHM = Path("/dev/shm")
REGION = "triton_python_backend_shm_region_"


@pytest.fixture(scope="module")
def running(standin):
    """The shared stand-in Triton: a running server whose ports the tests try to take."""
    return standin


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
    """Without a log path, a server's log is named after its host and gRPC port (never
    shared with another instance); a running server writes its own."""
    a = TritonServer(running.repository, 1, 2, 3)
    b = TritonServer(running.repository, 1, 4, 5, host="127.0.0.2")
    assert a.log_path == REPO_ROOT / "build" / "logs" / "triton-127.0.0.1-2.log"
    assert b.log_path.name == "triton-127.0.0.2-4.log"
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
        try:
            wait_for(lambda: len(_stubs(str(tmp_path))) >= 2, 60, "two python-backend stubs up")
        finally:
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
    wait_for(lambda: not _stubs(str(tmp_path)), 5, "python-backend stubs gone with their tritonserver")
    leaked = (_regions() - before) - _mapped_by_anyone()
    assert not leaked, leaked
