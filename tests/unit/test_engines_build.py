"""The whole build flow on CPU: a stand-in builder returns the marked ONNX as the "plan" and
the parity check runs it in ONNX Runtime against the original (Polygraphy runners)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from export.engines import __main__ as cli
from export.engines import parity
from export.engines.build import Options, build_model, engine_models
from export.engines.check import check_model
from export.engines.errors import EngineError, ParityError, TensorRTUnavailable
from export.engines.gpu import GpuInfo
from export.engines.metadata import cc_model_filenames, read_sidecar
from export.engines.request import BuildOutput
from tests.conftest import REPO_ROOT
from tests.support.engines import make_repository, tinyface_onnx

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
A10 = GpuInfo("NVIDIA A10", "8.6")


class FakeBuilder:
    """Returns the marked ONNX bytes (what TensorRT would compile), counting calls."""

    def __init__(self, plan_from=None):
        self.calls, self.plan_from = [], plan_from

    def __call__(self, req):
        self.calls.append(req)
        data = self.plan_from.SerializeToString() if self.plan_from is not None else req.onnx.read_bytes()
        return BuildOutput(data, "10.3.0", "fake")


@pytest.fixture
def repo(tmp_path):
    return make_repository(tmp_path)


def _opts(repo, tmp_path, **kw):
    return Options(repository=repo, timing_cache_dir=tmp_path / "cache", **kw)


def _build(repo, tmp_path, builder, gpu=H100, **kw):
    return build_model("tinyface", gpu, "10.3.0", _opts(repo, tmp_path, **kw), builder=builder,
                       candidate=parity.onnxrt_runner, log=lambda m: None)


def test_build_places_plan_sidecar_and_default_copy(repo, tmp_path):
    b = FakeBuilder()
    out = _build(repo, tmp_path, b)
    vdir = repo / "tinyface" / "1"
    assert out.status == "built" and out.plan == vdir / "model.sm90.plan"
    assert "b1 max|d| 0" in out.parity and "b8" in out.parity
    req = b.calls[0]
    assert (req.shapes.min_batch, req.shapes.opt_batch, req.shapes.max_batch) == (1, 4, 8)
    assert req.precision.fp16 and req.timing_cache == tmp_path / "cache" / "sm90-trt10.3.0.cache"
    assert not req.onnx.exists()             # the marked copy lived in a temp dir; the fake plan IS it:
    marked = onnx.load_from_string(out.plan.read_bytes())
    assert {n.name for n in marked.graph.node if n.name.startswith("KEEPFP32__")} == \
        {"KEEPFP32__" + n for n in req.precision.fp32_nodes}
    sc = read_sidecar(out.plan)
    assert (sc.tensorrt_version, sc.gpu_name, sc.compute_capability, sc.builder) == ("10.3.0", H100.name, "9.0", "fake")
    assert sc.build_flags["profile"]["max_batch"] == 8 and sc.build_flags["fp16"] is True
    assert sc.parity["passed"] is True
    assert (vdir / "model.plan").read_bytes() == out.plan.read_bytes()
    assert json.loads((vdir / "model.plan.json").read_text()) == json.loads((vdir / "model.sm90.plan.json").read_text())
    assert cc_model_filenames(vdir) == {"9.0": "model.sm90.plan"}
    assert check_model("tinyface", repo, H100, trt_version="10.3.0").ok
    assert not any(p.name.startswith(".engine-") or p.suffix == ".tmp" for p in vdir.iterdir())


def test_rerun_skips_and_changes_rebuild(repo, tmp_path):
    b = FakeBuilder()
    _build(repo, tmp_path, b)
    assert _build(repo, tmp_path, b).status == "up-to-date" and len(b.calls) == 1
    assert _build(repo, tmp_path, b, force=True).status == "built" and len(b.calls) == 2
    onnx.save(tinyface_onnx(seed=9), str(repo / "tinyface" / "1" / "model.onnx"))     # re-exported
    assert check_model("tinyface", repo, H100, trt_version="10.3.0").status == "stale"
    assert _build(repo, tmp_path, b).status == "built" and len(b.calls) == 3
    out = _build(repo, tmp_path, b, max_batch=4)                                       # MAX_BATCH=4
    assert out.status == "built" and read_sidecar(out.plan).build_flags["profile"]["max_batch"] == 4
    chk = check_model("tinyface", repo, H100, trt_version="10.3.0")
    assert chk.status == "stale" and "Triton refuses" in chk.message


def test_new_tensorrt_or_other_gpu_kind(repo, tmp_path):
    b = FakeBuilder()
    _build(repo, tmp_path, b)
    newer = build_model("tinyface", H100, "10.5.0", _opts(repo, tmp_path), builder=b,
                        candidate=parity.onnxrt_runner, log=lambda m: None)
    assert newer.status == "built"                       # the sidecar said 10.3.0
    _build(repo, tmp_path, b, gpu=A10)                   # a second GPU kind in the same repository
    vdir = repo / "tinyface" / "1"
    assert cc_model_filenames(vdir) == {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"}
    assert read_sidecar(vdir / "model.plan").compute_capability == "8.6"   # default = last host's kind


def test_failed_parity_places_nothing(repo, tmp_path):
    with pytest.raises(ParityError, match="tinyface: plan differs from ONNX Runtime"):
        _build(repo, tmp_path, FakeBuilder(plan_from=tinyface_onnx(seed=7)))
    vdir = repo / "tinyface" / "1"
    assert sorted(p.name for p in vdir.iterdir() if not p.name.endswith(".lock")) == ["model.onnx"]


def test_user_errors(repo, tmp_path):
    opts = _opts(repo, tmp_path)
    with pytest.raises(EngineError, match="not tensorrt_plan"):
        build_model("pyonly", H100, "10.3.0", opts, builder=FakeBuilder(), candidate=None, log=print)
    (repo / "tinyface" / "1" / "model.onnx").unlink()
    with pytest.raises(EngineError, match="make export-onnx MODELS=tinyface"):
        build_model("tinyface", H100, "10.3.0", opts, builder=FakeBuilder(), candidate=None, log=print)
    with pytest.raises(TensorRTUnavailable, match="--no-parity"):
        build_model("tinydet", H100, "10.3.0", opts, builder=FakeBuilder(), candidate=None, log=print)
    out = build_model("tinydet", H100, "10.3.0", _opts(repo, tmp_path, parity=False), builder=FakeBuilder(),
                      candidate=None, log=print)
    assert read_sidecar(out.plan).parity["figures"] == "skipped (--no-parity)"
    assert engine_models(repo) == ["tinydet", "tinyface"]


_RACER = """
import sys, time
from pathlib import Path
from export.engines import parity
from export.engines.build import Options, build_model
from export.engines.gpu import GpuInfo
from export.engines.request import BuildOutput
repo, counter = Path(sys.argv[1]), Path(sys.argv[2])
def builder(req):
    with open(counter, "a") as f:
        f.write("build\\n")
    time.sleep(1.0)
    return BuildOutput(req.onnx.read_bytes(), "10.3.0", "fake")
out = build_model("tinyface", GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), "10.3.0",
                  Options(repository=repo, timing_cache_dir=repo.parent / "cache"),
                  builder=builder, candidate=parity.onnxrt_runner, log=lambda m: None)
print(out.status)
"""


def test_concurrent_builds_do_not_race(repo, tmp_path):
    counter = tmp_path / "builds.txt"
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(repo), str(counter)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = sorted(p.communicate(timeout=180)[0].strip().splitlines()[-1] for p in procs)
    assert outs == ["built", "up-to-date"]
    assert counter.read_text().count("build") == 1
    assert check_model("tinyface", repo, H100, trt_version="10.3.0").ok


def test_cli_without_tensorrt_says_what_to_do(repo, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("TRTEXEC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(sys.modules, "tensorrt", None)       # `import tensorrt` fails even where installed
    rc = cli.main(["--models", "tinyface", "--repository", str(repo)])
    assert rc == 2
    assert "`import tensorrt` fails and no trtexec binary was found" in caplog.text
    with pytest.raises(TensorRTUnavailable, match="not importable here"):
        cli.pick_builder("python")
    assert cli.main(["--models", "pyonly", "--repository", str(repo)]) == 2
    assert "only for models whose config platform is tensorrt_plan" in caplog.text


def test_summary_table():
    from export.engines.build import Outcome

    text = cli.summary([Outcome("arcface", "built", Path("model.sm90.plan"), 87_000_000, 41.2,
                                "b1 max|d| 0.0012 cos 0.99998", ("built on X",))], 42.0)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "status", "plan", "MB", "build", "s", "parity"]
    assert lines[1].split()[:5] == ["arcface", "built", "model.sm90.plan", "87.0", "41.2"]
    assert "warning: built on X" in lines[2] and lines[-1] == "total 42.0 s"


def test_cli_check_reports_each_plan(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "current_gpu", lambda ordinal=0: H100)
    monkeypatch.setattr("export.engines.check.tensorrt_version", lambda: "10.3.0")
    assert cli.main(["--check", "--repository", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "tinydet/1/model.plan: missing" in out and "make export-engines MODELS=tinyface" in out
    _build(repo, tmp_path, FakeBuilder())
    assert cli.main(["--check", "--models", "tinyface", "--repository", str(repo)]) == 0
    assert "up to date (TensorRT 10.3.0, NVIDIA H100 80GB HBM3)" in capsys.readouterr().out
    monkeypatch.setattr("export.engines.check.tensorrt_version", lambda: "10.7.0")
    assert cli.main(["--check", "--models", "tinyface", "--repository", str(repo)]) == 1
    assert "FOREIGN - built with TensorRT 10.3.0, this host has 10.7.0" in capsys.readouterr().out


def test_cli_refuses_tensorrt_11_before_building(repo, monkeypatch, caplog):
    b = FakeBuilder()
    monkeypatch.setattr(cli, "pick_builder", lambda name: (b, parity.onnxrt_runner))
    monkeypatch.setattr(cli, "current_gpu", lambda ordinal=0: H100)
    monkeypatch.setattr(cli, "tensorrt_version", lambda: "11.4.0")
    assert cli.main(["--models", "tinyface", "--repository", str(repo)]) == 2
    assert "TensorRT 11.4.0" in caplog.text and "removed BuilderFlag.FP16" in caplog.text and not b.calls
