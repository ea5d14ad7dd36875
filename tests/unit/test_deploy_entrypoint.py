"""The GPU image's entrypoint (`python -m deploy`) with a stand-in builder: build, serve from
keys, the read-only init check, two image versions side by side, rollback, keys, gc, the
start-up conditions an operator must fix, the volume pre-flight."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from deploy import entrypoint
from export.engines import parity
from export.engines.gpu import GpuInfo
from export.engines.preflight import verify_turns
from export.engines.store import PlanStore
from tests.conftest import REPO_ROOT
from tests.support.engines import make_repository, tinyface_onnx
from tests.unit.test_engines_store import StandInBuilder

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
SETTINGS = ("VISIONSERVE_PLANS", "VISIONSERVE_ENGINE_ARGS", "VISIONSERVE_TRITON_ARGS", "VISIONSERVE_PARITY_WAIVE",
            "VISIONSERVE_IMAGE", "VISIONSERVE_POOL", "VISIONSERVE_NAMESPACE", "VISIONSERVE_DEPLOYED_IMAGES",
            "VISIONSERVE_PLAN_WAIT_S")


@pytest.fixture()
def host(monkeypatch):
    """This container: an H100 on a CUDA 13 driver, TensorRT 10.3.0, the stand-in builder; exec recorded."""
    import export.engines as engines
    import export.engines.builders as builders
    from deploy import driver

    builder = StandInBuilder()
    monkeypatch.setattr(engines, "current_gpu", lambda *a: H100)
    monkeypatch.setattr(engines, "tensorrt_version", lambda: "10.3.0")
    monkeypatch.setattr(builders, "pick_builder", lambda name: (builder, parity.onnxrt_runner))
    monkeypatch.setattr(driver, "driver_cuda", lambda: 13000)
    monkeypatch.setattr(driver, "kernel_driver", lambda: "580.95.05")
    monkeypatch.setenv("CUDA_VERSION", "13.1.0.036")
    execs = []
    monkeypatch.setattr(os, "execv", lambda path, argv: execs.append(argv))
    for var in SETTINGS:
        monkeypatch.delenv(var, raising=False)
    return builder, execs


def image(root: Path, seed: int = 0) -> Path:
    repo = make_repository(root)
    (repo / "pyonly" / "1" / "model.py").write_text("# python model\n")
    if seed:
        onnx.save(tinyface_onnx(seed=seed), str(repo / "tinyface" / "1" / "model.onnx"))
    return repo


def _tree(root: Path) -> dict:
    """Every path under `root` with its mtime: what a read-only user must leave as it was."""
    return {p: p.lstat().st_mtime_ns for p in root.rglob("*")}


def _served(execs) -> Path:
    repo = [a for a in execs[-1] if a.startswith("--model-repository=")][0]
    return Path(repo.split("=", 1)[1])


def run(mode, store, source, served, *extra):
    return entrypoint.main([mode, "--store", str(store), "--source", str(source), "--served", str(served), *extra])


def test_build_then_a_read_only_serve_assembles_the_repository_from_keys(host, tmp_path, monkeypatch):
    builder, execs = host
    store, src, served = tmp_path / "store", image(tmp_path / "img"), tmp_path / "served"
    assert run("build", store, src, served) == 0
    assert sorted(builder.calls) == ["tinydet", "tinyface"]
    keys = PlanStore(store).keys()
    assert len(keys) == 2 and all((store / "uses" / g / m / n).is_file() for g, m, n in keys)
    monkeypatch.setenv("VISIONSERVE_PLANS", "require")       # the serving container: volume read-only
    before = _tree(store)
    assert run("serve", store, src, served) == 0
    assert _tree(store) == before                            # nothing written, not even a use marker
    assert len(builder.calls) == 2                           # nothing built while serving
    repo = _served(execs)
    assert repo.parent == served and (repo / ".complete").is_file()
    for model in ("tinyface", "tinydet"):
        plan = repo / model / "1" / "model.plan"
        gpu_plans = store / "plans" / "nvidia-h100-80gb-hbm3-sm90" / model
        assert plan.is_symlink() and Path(os.readlink(plan)).is_relative_to(gpu_plans)
        assert (repo / model / "1" / "model.onnx").resolve() == (src / model / "1" / "model.onnx").resolve()
        assert not (repo / model / "config.pbtxt").is_symlink()
    assert (repo / "pyonly" / "1" / "model.py").is_symlink() and not (repo / "pyonly" / "1" / "model.plan").exists()
    from export.engines.check import check_repository

    checks = check_repository(repo, H100, trt_version="10.3.0")      # what serving code checks before Triton
    assert [c.status for c in checks] == ["ok", "ok"], [c.message for c in checks]
    cmd = execs[-1]
    assert cmd[0] == "/opt/tritonserver/bin/tritonserver" and "--model-control-mode=none" in cmd


def test_the_init_check_is_read_only_and_names_the_missing_keys_and_the_job(host, tmp_path, monkeypatch, capsys,
                                                                           caplog):
    store, src, served = tmp_path / "store", image(tmp_path / "img"), tmp_path / "served"
    store.mkdir()
    monkeypatch.setenv("VISIONSERVE_POOL", "l4")
    monkeypatch.setenv("VISIONSERVE_NAMESPACE", "vs")
    assert run("check", store, src, served) == 2
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["model"], r["published"]) for r in rows] == [("tinydet", False), ("tinyface", False)]
    assert "2 of 2 plans" in caplog.text and rows[1]["key"] in caplog.text
    assert "kubectl -n vs apply -k k8s/plan-build" in caplog.text and "job/triton-plans-l4" in caplog.text
    assert not list(store.iterdir())
    assert run("build", store, src, served) == 0
    capsys.readouterr()
    before = _tree(store)
    assert run("check", store, src, served) == 0
    assert all(json.loads(line)["published"] for line in capsys.readouterr().out.splitlines())
    assert _tree(store) == before
    assert not host[1]                                       # check never execs tritonserver


def test_two_image_versions_side_by_side_and_a_rollback(host, tmp_path):
    builder, execs = host
    store, served = tmp_path / "store", tmp_path / "served"
    v1, v2 = image(tmp_path / "v1"), image(tmp_path / "v2", seed=9)
    assert run("serve", store, v1, served) == 0        # compose: no plan-build Job, serve builds
    repo1 = _served(execs)
    plan1 = (repo1 / "tinyface" / "1" / "model.plan").resolve()
    assert run("serve", store, v2, served) == 0        # the rollout's new pods
    repo2 = _served(execs)
    plan2 = (repo2 / "tinyface" / "1" / "model.plan").resolve()
    assert repo1 != repo2 and plan1 != plan2 and plan1.is_file() and plan2.is_file()
    assert (repo1 / "tinyface" / "1" / "model.plan").resolve() == plan1   # v1's pods untouched meanwhile
    assert sorted(builder.calls) == ["tinydet", "tinyface", "tinyface"]  # tinydet did not change: one key
    assert run("serve", store, v1, served) == 0        # rollback: v1's keys are still there
    assert _served(execs) == repo1 and len(builder.calls) == 3


def test_serving_without_built_plans_says_what_to_run(host, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("VISIONSERVE_PLANS", "require")
    assert run("serve", tmp_path / "store", image(tmp_path), tmp_path / "served") == 2
    assert "docker compose -f docker/compose.yaml run --rm triton-0 build" in caplog.text and not host[1]
    monkeypatch.setenv("VISIONSERVE_PLANS", "sometimes")
    assert run("serve", tmp_path / "store", image(tmp_path / "b"), tmp_path / "served") == 2
    assert "expected one of build, require" in caplog.text


def test_keys_and_gc(host, tmp_path, capsys):
    store, served = tmp_path / "store", tmp_path / "served"
    v1, v2 = image(tmp_path / "v1"), image(tmp_path / "v2", seed=9)
    assert run("keys", store, v1, served) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["model"], r["published"], r["parity_waived"]) for r in rows] == [("tinydet", False, False),
                                                                               ("tinyface", False, False)]
    assert rows[1]["key"].startswith("nvidia-h100-80gb-hbm3-sm90/tinyface/trt10.3.0-")
    run("build", store, v1, served)
    assert run("build", store, v2, served, "--gc", "--keep", "1") == 0      # the Job's way
    names = [n for _, m, n in PlanStore(store).keys() if m == "tinyface"]
    assert len(names) == 1 and names[0] != rows[1]["key"].rsplit("/", 1)[1]     # v1's went, v2's stayed
    capsys.readouterr()
    assert run("gc", store, v1, served, "--keep", "1") == 0 and len(PlanStore(store).keys()) == 2
    assert run("keys", store, v2, served) == 0
    assert all(json.loads(line)["published"] for line in capsys.readouterr().out.splitlines())
    assert run("gc", store, v1, served, "--keep", "0") == 2


def test_start_up_conditions_the_operator_must_fix(host, tmp_path, monkeypatch, caplog):
    import export.engines as engines
    from deploy import driver

    src = image(tmp_path)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert run("build", not_a_dir, src, tmp_path / "served") == 2
    assert "is not writable" in caplog.text and "fsGroup" in caplog.text
    monkeypatch.setenv("VISIONSERVE_ENGINE_ARGS", "--no-parity")
    assert run("build", tmp_path / "store", src, tmp_path / "served") == 2
    assert "VISIONSERVE_PARITY_WAIVE=<model>" in caplog.text
    monkeypatch.setenv("VISIONSERVE_ENGINE_ARGS", "--max-batch 2 --opt-level 3")
    monkeypatch.setenv("VISIONSERVE_PLAN_WAIT_S", "soon")
    assert run("build", tmp_path / "store", src, tmp_path / "served") == 2
    assert "VISIONSERVE_PLAN_WAIT_S='soon' is not a number" in caplog.text
    monkeypatch.delenv("VISIONSERVE_PLAN_WAIT_S")
    monkeypatch.setattr(driver, "driver_cuda", lambda: 12080)          # an R570 driver: CUDA 12.8 at most
    monkeypatch.setattr(driver, "kernel_driver", lambda: "570.172.08")
    assert run("check", tmp_path / "store", src, tmp_path / "served") == 2
    assert "driver 570.172.08 runs CUDA 12.8 at most" in caplog.text and "R580" in caplog.text
    monkeypatch.setattr(driver, "driver_cuda", lambda: 13000)
    monkeypatch.setattr(engines, "tensorrt_version", lambda: "11.0.0")
    assert run("build", tmp_path / "store", src, tmp_path / "served") == 2
    assert "TensorRT 11.0.0 (this image's libnvinfer / tensorrt module) is not supported" in caplog.text

    def no_gpu(*_):
        raise engines.NoGpu("no CUDA device 0 visible here")

    monkeypatch.setattr(engines, "current_gpu", no_gpu)
    assert run("build", tmp_path / "store", src, tmp_path / "served") == 2
    assert "nvidia.com/gpu" in caplog.text


def test_an_image_with_synthetic_weights_says_so_at_every_start(host, tmp_path, caplog):
    src = image(tmp_path)
    (src / "tinyface" / "1" / "export.json").write_text(json.dumps({"synthetic": True, "provenance": "seed 1"}))
    (src / "tinydet" / "1" / "export.json").write_text(json.dumps({"synthetic": False, "provenance": "real"}))
    assert run("serve", tmp_path / "store", src, tmp_path / "served") == 0
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "SYNTHETIC" in r.message]
    assert len(warned) == 1 and "tinyface" in warned[0].message and "tinydet" not in warned[0].message


def test_triton_command_has_the_embedded_hardening(tmp_path):
    from serving.tritonserver import TritonInstall, TritonServer

    cmd = entrypoint.triton_command(tmp_path, "k3y", ["--log-verbose=1"])
    assert cmd[0] == "/opt/tritonserver/bin/tritonserver"
    assert "--model-control-mode=none" in cmd and "--strict-readiness=true" in cmd
    restricted = [c for c in cmd if c.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))]
    assert len(restricted) == 2
    for flag in restricted:
        apis, key = flag.split("=", 1)[1].split(":")
        assert set(apis.split(",")) >= {"model-repository", "shared-memory", "statistics", "trace", "logging"}
        assert key == "admin-key=k3y"
    assert {"--http-address=0.0.0.0", "--grpc-address=0.0.0.0", "--metrics-address=0.0.0.0"} <= set(cmd)
    assert f"--model-repository={tmp_path.resolve()}" in cmd and cmd[-1] == "--log-verbose=1"
    fake = TritonInstall(Path("/x/tritonserver"), Path("/x"), Path("/x"), Path("/x"))
    embedded = TritonServer(tmp_path, admin_key="k3y").command(fake)

    def flags(c):
        return {f.split("=")[0] for f in c[1:]}
    assert flags(embedded) <= flags(cmd)


# -- the volume pre-flight ---------------------------------------------------------------------
def test_preflight_passes_on_a_local_volume(tmp_path, capsys):
    assert entrypoint.main(["preflight", "--store", str(tmp_path / "vol")]) == 0
    out = capsys.readouterr().out
    for check in ("writable", "rename", "flock", "crash", "turns"):
        assert f"PASS  {check}" in out
    assert not [p for p in (tmp_path / "vol").rglob("*") if p.is_file()]    # cleans up after itself


def test_preflight_peers_take_turns_across_processes(tmp_path):
    """As the image runs it: `python -m deploy preflight`, two processes, one run id."""
    vol = tmp_path / "vol"
    procs = [subprocess.Popen([sys.executable, "-m", "deploy", "preflight", "--store", str(vol), "--peers", "2",
                               "--run-id", "job-1"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("PASS  turns      6 turns by 2 holders" in o for o in outs)


def test_turn_counting_catches_overlapping_holders():
    done = ["done-node-a-1", "done-node-b-7"]
    assert verify_turns(6, done, 3)[0]
    ok, why = verify_turns(5, done, 3)
    assert not ok and "two holders were inside the lock at once" in why


def test_preflight_fails_where_nothing_can_be_written(tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")                        # like a mount this uid cannot write to
    assert entrypoint.main(["preflight", "--store", str(blocker / "vol")]) == 2
    out = capsys.readouterr().out
    assert "FAIL  writable" in out and "fsGroup" in out and "pre-flight: FAILED" in out
