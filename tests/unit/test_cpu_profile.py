"""The CPU profiles: settings derived from the machine, recorded in the configs; the native
OpenVINO variant rendered and parsed with Triton's proto (it cannot run here)."""
from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as mc

import contract
from contract.facts import facts
from serving import cpu_machine, profiles
from serving.cpu_machine import CpuSettings, CpuSettingsError

COMMITTED = contract.load_all()
NETWORK = sorted(n for n, c in COMMITTED.items() if c.kind == "network")


def never_bf16(name: str) -> str:
    return facts(COMMITTED[name]).cpu_f32_only


def prefers_onnxruntime(name: str) -> bool:
    return facts(COMMITTED[name]).cpu_prefer_runtime == "onnxruntime"


def test_usable_cores_honour_the_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_machine.cgroup_cpu_limit(tmp_path) == 1.5
    assert cpu_machine.usable_cores(tmp_path) == 1            # floor(1.5), never above the affinity set
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_machine.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cpu_machine.cgroup_cpu_limit(v1) == 4.0
    import os
    assert cpu_machine.usable_cores(tmp_path / "none") == len(os.sched_getaffinity(0))


def test_native_bf16_from_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx512f avx512_bf16\n")
    assert cpu_machine.native_bf16(cpu_machine.cpu_flags(info))
    info.write_text("processor : 0\nflags : fpu avx512f avx512_vnni\n")
    assert not cpu_machine.native_bf16(cpu_machine.cpu_flags(info))


def test_resolve_picks_bf16_only_where_native_and_with_openvino():
    auto = CpuSettings()
    r = auto.resolve(cores=8, bf16=True, have_openvino=True)
    assert (r.runtime, r.precision, r.threads, r.slots) == ("openvino", "bf16", 8, 2)
    assert CpuSettings(threads=2).resolve(cores=8, bf16=True, have_openvino=True).slots == 8   # 2 x cores // threads
    assert CpuSettings(slots=0).resolve(cores=8, bf16=True, have_openvino=True).slots == 0     # no limit
    assert auto.resolve(cores=8, bf16=False, have_openvino=True).precision == "f32"
    fallback = auto.resolve(cores=2, bf16=True, have_openvino=False)
    assert (fallback.runtime, fallback.precision) == ("onnxruntime", "f32") and "not installed" in fallback.notes[0]
    assert CpuSettings("onnxruntime").resolve(cores=2, bf16=True, have_openvino=True).precision == "f32"
    assert CpuSettings(threads=3).resolve(cores=16, bf16=False, have_openvino=True).threads == 3
    with pytest.raises(CpuSettingsError, match="no native bf16"):
        CpuSettings(precision="bf16").resolve(cores=2, bf16=False, have_openvino=True)
    with pytest.raises(CpuSettingsError, match="needs the openvino runtime"):
        CpuSettings("onnxruntime", "bf16").resolve(cores=2, bf16=True, have_openvino=True)
    with pytest.raises(CpuSettingsError, match="unknown CPU runtime"):
        CpuSettings("tvm")


def test_settings_from_env_and_cli():
    env = {"VISIONSERVE_CPU_RUNTIME": "onnxruntime", "VISIONSERVE_CPU_PRECISION": "f32", "VISIONSERVE_CPU_THREADS": "4"}
    assert CpuSettings.from_env(env) == CpuSettings("onnxruntime", "f32", 4)
    assert CpuSettings.from_env({}) == CpuSettings()
    with pytest.raises(CpuSettingsError, match="not a number"):
        CpuSettings.from_env({"VISIONSERVE_CPU_THREADS": "many"})
    import argparse
    ap = argparse.ArgumentParser()
    cpu_machine.add_arguments(ap)
    args = ap.parse_args(["--cpu-runtime", "onnxruntime", "--cpu-threads", "2", "--cpu-slots", "0"])
    assert cpu_machine.from_args(args) == CpuSettings("onnxruntime", "auto", 2, 0)


@pytest.mark.parametrize("name", NETWORK)
def test_cpu_configs_record_runtime_precision_and_threads(name):
    cpu = CpuSettings().resolve(cores=6, bf16=True, have_openvino=True)
    cfg = profiles.transform(COMMITTED[name].config, "cpu", provenance="w", cpu=cpu)
    p = {k: v.string_value for k, v in cfg.parameters.items()}
    assert cfg.backend == "python"
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert p["cpu_runtime"] == ("onnxruntime" if prefers_onnxruntime(name) else "openvino")
    assert ("cpu_runtime_why" in p) == prefers_onnxruntime(name)
    assert p["cpu_threads"] == "6" and p["cpu_slots"] == "2" and p["cpu_fallback"] == "onnxruntime"
    # geometry graphs never run in bf16, and say why
    assert p["cpu_precision"] == ("f32" if never_bf16(name) else "bf16")
    assert ("cpu_precision_why" in p) == bool(never_bf16(name))
    assert ("openvino_cache" in p) == (p["cpu_runtime"] == "openvino")
    ort = profiles.transform(COMMITTED[name].config, "cpu", cpu=CpuSettings("onnxruntime").resolve(cores=2))
    assert ort.parameters["cpu_runtime"].string_value == "onnxruntime" and "openvino_cache" not in ort.parameters


@pytest.mark.parametrize("name", [n for n in NETWORK if not never_bf16(n)])
def test_synthetic_weights_are_served_in_f32_unless_the_user_fixed_bf16(name):
    """bf16 is served only where its parity is checked (real weights): a seeded stand-in stays
    f32 on a bf16 CPU, in the python runner and in the native OpenVINO variant, saying why."""
    auto = CpuSettings().resolve(cores=6, bf16=True, have_openvino=True)
    if prefers_onnxruntime(name):
        pytest.skip(f"{name} runs in ONNX Runtime (f32) anyway")
    cfg = profiles.transform(COMMITTED[name].config, "cpu", cpu=auto, synthetic=True)
    p = {k: v.string_value for k, v in cfg.parameters.items()}
    assert p["cpu_precision"] == "f32" and p["cpu_precision_why"] == profiles.SYNTHETIC_F32
    real = profiles.transform(COMMITTED[name].config, "cpu", cpu=auto, synthetic=False)
    assert real.parameters["cpu_precision"].string_value == "bf16"
    fixed = CpuSettings(precision="bf16").resolve(cores=6, bf16=True, have_openvino=True)
    forced = profiles.transform(COMMITTED[name].config, "cpu", cpu=fixed, synthetic=True)
    assert forced.parameters["cpu_precision"].string_value == "bf16"
    native = profiles.transform(COMMITTED[name].config, "openvino", cpu=auto, synthetic=True)
    assert native.platform == "onnxruntime_onnx" and native.backend != "openvino"


@pytest.mark.parametrize("name", NETWORK)
def test_native_openvino_variant_renders_and_parses(name):
    prod = COMMITTED[name].config
    auto = CpuSettings().resolve(cores=4, bf16=True, have_openvino=True)
    cfg = profiles.transform(prod, "openvino", provenance="w", cpu=auto)
    again = contract.parse_config(contract.to_text(cfg))      # what a Triton with the backend reads
    assert again == cfg
    assert profiles.summary(cfg) == profiles.summary(prod)
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert not cfg.HasField("optimization")
    p = {k: v.string_value for k, v in cfg.parameters.items()}
    if never_bf16(name):
        assert (cfg.platform, cfg.backend) == ("onnxruntime_onnx", "")
        assert "PERFORMANCE_HINT" not in p
        return
    assert (cfg.backend, cfg.platform, cfg.default_model_filename) == ("openvino", "", "model.onnx")
    assert p["PERFORMANCE_HINT"] == "LATENCY" and p["NUM_STREAMS"] == "1"
    # the backend's own default (every core of ITS host) unless the user fixed threads / precision
    assert "INFERENCE_NUM_THREADS" not in p and "HINT_BF16" not in p
    fixed = profiles.transform(prod, "openvino", cpu=CpuSettings(precision="bf16", threads=3).resolve(
        cores=4, bf16=True, have_openvino=True))
    assert fixed.parameters["INFERENCE_NUM_THREADS"].string_value == "3"
    assert fixed.parameters["HINT_BF16"].string_value == "YES"
    # the python runner's own parameters do not leak into a config another backend reads
    assert not any(k.startswith("cpu_") for k in p)


def test_native_openvino_repository_is_shippable(source, tmp_path):
    d = profiles.derive("openvino", dest=tmp_path / "ov", source=source)
    assert d.cpu is not None and not d.skipped
    assert not any(p.is_symlink() for p in d.path.rglob("*"))
    assert not (d.path / "yolo" / "1" / "model.py").exists()         # the backend reads model.onnx itself
    assert contract.load("yolo", d.path).config.backend == "openvino"


def test_cli_flags_reach_the_derived_configs(source, tmp_path):
    from serving.run import main

    assert main(["derive", "--source", str(source), "--dest", str(tmp_path / "c"), "--cpu-runtime", "onnxruntime",
                 "--cpu-threads", "3"]) == 0
    cfg = contract.load("arcface", tmp_path / "c").config
    assert cfg.parameters["cpu_runtime"].string_value == "onnxruntime"
    assert cfg.parameters["cpu_threads"].string_value == "3"


def test_gateway_models_listing_shows_the_cpu_runtime(source, tmp_path):
    """GET /v1/models reports what each model (and each pipeline's steps) runs with."""
    from gateway.testing import FakeBackend
    from tests.support.fakes import app_client as client

    cpu = CpuSettings().resolve(cores=2, bf16=True, have_openvino=True)
    d = profiles.derive("cpu", dest=tmp_path / "cpu", source=source, cpu=cpu)
    with client(FakeBackend(repository=d.path, models=("yolo", "faces", "scrfd", "face_align", "arcface"))) as c:
        r = c.get("/v1/models")
    assert r.status_code == 200, r.text
    by = {m["name"]: m for m in r.json()["models"]}
    assert by["yolo"]["cpu_runtime"] == {"runtime": "openvino", "precision": "bf16", "threads": "2",
                                         "slots": "2", "fallback": "onnxruntime"}
    steps = by["faces"]["component_cpu_runtimes"]
    assert steps["arcface"]["precision"] == "bf16" and steps["face_align"]["precision"] == "f32"
    assert by["faces"]["cpu_runtime"] is None          # a BLS pipeline runs no graph of its own
