"""The content-keyed plan store with a stand-in builder (the marked ONNX is the "plan" and
the parity check runs it in ONNX Runtime): keys, read-only publishing, two image versions
side by side, rollback, racing builders, a crashed builder, the lock deadline, gc."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from export.engines import parity
from export.engines.build import Options
from export.engines.errors import EngineError, LockTimeout
from export.engines.gpu import GpuInfo
from export.engines.lock import Deadline, lock_path
from export.engines.metadata import read_sidecar
from export.engines.request import BuildOutput
from export.engines.store import PlanStore, ensure_all, gpu_slug, plan_key
from tests.conftest import REPO_ROOT
from tests.support.engines import make_repository, tinyface_onnx

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0")
A30 = GpuInfo("NVIDIA A30", "8.0")
TRT = "10.3.0"


class StandInBuilder:
    """What TensorRT would compile, returned as the plan (the marked ONNX), counting calls."""

    def __init__(self, version: str = TRT):
        self.calls, self.version = [], version

    def __call__(self, req):
        self.calls.append(req.model)
        return BuildOutput(req.onnx.read_bytes(), self.version, "stand-in")


def image(root: Path, seed: int = 0) -> Path:
    """An image's repository: tinyface (ONNX weights from `seed`), tinydet, pyonly."""
    repo = make_repository(root)
    if seed:
        onnx.save(tinyface_onnx(seed=seed), str(repo / "tinyface" / "1" / "model.onnx"))
    return repo


def ensure(store, source, builder, gpu=H100, model="tinyface", **kw):
    return store.ensure(model, gpu, TRT, Options(repository=source, default_plan=False,
                                                 timing_cache_dir=store.timing_cache_dir(gpu)),
                        builder=builder, candidate=parity.onnxrt_runner, log=lambda m: None, **kw)


def test_the_key_covers_onnx_recipe_tensorrt_and_the_exact_gpu():
    base = plan_key("yolo", "a" * 64, {"fp16": True}, "10.5.0", H100)
    assert base == plan_key("yolo", "a" * 64, {"fp16": True}, "10.5.0", H100)
    others = [plan_key("yolo", "b" * 64, {"fp16": True}, "10.5.0", H100),
              plan_key("yolo", "a" * 64, {"fp16": True, "tf32": False}, "10.5.0", H100),
              plan_key("yolo", "a" * 64, {"fp16": True}, "10.6.0", H100),
              plan_key("yolo", "a" * 64, {"fp16": True}, "10.5.0", GpuInfo("NVIDIA H200", "9.0"))]
    assert len({k.digest for k in [base, *others]}) == 5
    assert gpu_slug(A100) == "nvidia-a100-sxm4-80gb-sm80" and gpu_slug(A30) == "nvidia-a30-sm80"
    assert str(base) == f"nvidia-h100-80gb-hbm3-sm90/yolo/trt10.5.0-{base.digest[:20]}"


def test_a_built_plan_is_published_read_only_and_reused(tmp_path):
    store, src, b = PlanStore(tmp_path / "store"), image(tmp_path), StandInBuilder()
    first = ensure(store, src, b)
    assert first.status == "built" and b.calls == ["tinyface"] and first.version == "1"
    d = first.plan.parent
    assert d == store.key_dir(first.key) and d.name == first.key.name
    assert stat.S_IMODE(d.stat().st_mode) == 0o555
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in d.iterdir()} == {"model.plan": 0o444,
                                                                              "model.plan.json": 0o444}
    sc = read_sidecar(first.plan)
    assert (sc.plan_key, sc.tensorrt_version, sc.gpu_name, sc.parity["passed"]) == (d.name, TRT, H100.name, True)
    assert sc.build_flags["tf32"] is False
    again = ensure(store, src, b)
    assert (again.status, again.plan, b.calls) == ("reused", first.plan, ["tinyface"])
    assert not list(d.parent.glob(".partial-*"))


def test_two_image_versions_side_by_side_then_rollback(tmp_path):
    store, b = PlanStore(tmp_path / "store"), StandInBuilder()
    v1, v2 = image(tmp_path / "v1"), image(tmp_path / "v2", seed=9)
    p1 = ensure(store, v1, b)
    p2 = ensure(store, v2, b)                     # a rollout: the new image's own key
    assert p1.key != p2.key and p1.plan.is_file() and p2.plan.is_file() and len(b.calls) == 2
    assert p1.plan.read_bytes() != p2.plan.read_bytes()
    back = ensure(store, v1, b)                   # a rollback (or an old pod restarting) finds v1's key
    assert (back.status, back.plan, len(b.calls)) == ("reused", p1.plan, 2)
    assert read_sidecar(p1.plan).onnx_sha256 != read_sidecar(p2.plan).onnx_sha256


def test_gc_keeps_the_most_recently_used_keys_per_gpu_kind_and_model(tmp_path):
    store, b = PlanStore(tmp_path / "store"), StandInBuilder()
    keys = {}
    for seed in (1, 2, 3):
        keys[seed] = ensure(store, image(tmp_path / f"v{seed}", seed=seed), b).key
        time.sleep(0.02)
    store.record_use([keys[1]])                   # v1 serves again (rollback): most recent now
    a30 = ensure(store, image(tmp_path / "a30", seed=1), b, gpu=A30).key   # same cc, other GPU kind
    removed = store.gc(keep=2, log=lambda m: None)
    assert removed == [store.key_dir(keys[2])]
    assert all(store.published(k) for k in (keys[1], keys[3], a30))
    assert not store.use_marker(keys[2]).exists() and not lock_path(store.key_dir(keys[2])).exists()
    with pytest.raises(EngineError, match="at least the newest"):
        store.gc(keep=0)


def test_a_missing_key_without_building_says_what_to_run(tmp_path):
    store = PlanStore(tmp_path / "store")
    with pytest.raises(EngineError, match="plan-build Job"):
        ensure(store, image(tmp_path), None, build=False)
    assert not (tmp_path / "store").exists()      # a read-only serving container writes nothing


_BUILDER = """
import sys, time
from pathlib import Path
from export.engines import parity
from export.engines.build import Options
from export.engines.gpu import GpuInfo
from export.engines.request import BuildOutput
from export.engines.store import PlanStore
store, source, log, sleep_s = PlanStore(Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
def builder(req):
    with open(log, "a") as f:
        f.write("build\\n")
    time.sleep(sleep_s)
    return BuildOutput(req.onnx.read_bytes(), "10.3.0", "stand-in")
gpu = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
with store.session():
    out = store.ensure("tinyface", gpu, "10.3.0", Options(repository=source, default_plan=False,
                       timing_cache_dir=store.timing_cache_dir(gpu)), builder=builder,
                       candidate=parity.onnxrt_runner, log=lambda m: None)
print(out.status)
"""


def _builder_process(store: Path, source: Path, log: Path, sleep_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _BUILDER, str(store), str(source), str(log), str(sleep_s)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)


def test_two_racing_builders_build_once(tmp_path):
    store, src, log = tmp_path / "store", image(tmp_path), tmp_path / "builds.txt"
    procs = [_builder_process(store, src, log, 1.0) for _ in range(2)]
    outs = sorted(p.communicate(timeout=180)[0].strip().splitlines()[-1] for p in procs)
    assert outs == ["built", "built meanwhile"] and log.read_text().count("build") == 1
    assert len(PlanStore(store).keys()) == 1


def test_a_crashed_builder_leaves_no_plan_and_the_next_one_builds(tmp_path):
    store, src, log = tmp_path / "store", image(tmp_path), tmp_path / "builds.txt"
    crashed = _builder_process(store, src, log, 600.0)
    t0 = time.monotonic()
    while not (log.is_file() and "build" in log.read_text()):
        assert time.monotonic() - t0 < 120 and crashed.poll() is None, "the builder never started"
        time.sleep(0.1)
    os.kill(crashed.pid, signal.SIGKILL)          # mid-build: lock held, partial folder written
    crashed.wait(10)
    s = PlanStore(store)
    assert s.keys() == [] and len(list((store / "plans").glob("*/tinyface/.partial-*"))) == 1
    waits = []
    out = s.ensure("tinyface", H100, TRT, Options(repository=src, default_plan=False,
                                                  timing_cache_dir=s.timing_cache_dir(H100)),
                   builder=StandInBuilder(), candidate=parity.onnxrt_runner, log=waits.append,
                   deadline=Deadline(30, "test"))
    assert out.status == "built" and s.published(out.key)
    assert not list((store / "plans").glob("*/tinyface/.partial-*"))   # the dead builder's folder went


_HOLDER = """
import sys, time
from pathlib import Path
from export.engines.lock import target_lock
with target_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_lock_waits_share_one_overall_deadline_with_a_clear_error(tmp_path):
    store, src = PlanStore(tmp_path / "store"), image(tmp_path)
    key = ensure(store, src, StandInBuilder()).key
    shutil.rmtree(store.root / "plans")           # the key is gone, and another builder holds its lock
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store.key_dir(key))], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as err:
            ensure_all(store, ["tinyface", "tinydet"], H100, TRT,
                       Options(repository=src, default_plan=False, parity=False), builder=StandInBuilder(),
                       candidate=None, log=lambda m: None, deadline=Deadline(1.5, "VISIONSERVE_PLAN_WAIT_S"))
        assert time.monotonic() - t0 < 10
        msg = str(err.value)
        assert "overall deadline of 2 s for lock waits (VISIONSERVE_PLAN_WAIT_S) is spent" in msg
        assert f"pid {holder.pid}" in msg and key.name in msg
    finally:
        holder.kill()
        holder.wait(10)


def test_gc_spares_a_live_builder_and_removes_a_dead_ones_partial(tmp_path):
    store, src = PlanStore(tmp_path / "store"), image(tmp_path)
    key = ensure(store, src, StandInBuilder()).key
    model_dir = store.key_dir(key).parent
    dead = model_dir / f".partial-{key.name}+node-a+123"
    live = model_dir / ".partial-trt10.3.0-feedbeef+node-b+456"
    dead.mkdir()
    live.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(model_dir / "trt10.3.0-feedbeef")],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        removed = store.gc(keep=1, log=lambda m: None)
    finally:
        holder.kill()
        holder.wait(10)
    assert removed == [dead] and live.exists() and store.published(key)
