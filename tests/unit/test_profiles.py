"""Serving profiles: the committed configs parse, derived ones keep the contract."""
from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

import contract
from serving import profiles
from serving.tritonserver import TritonInstall, TritonServer, TritonServerError

COMMITTED = contract.load_all()
NETWORK = sorted(n for n, c in COMMITTED.items() if c.kind == "network")


def test_every_committed_config_parses_with_tritons_proto():
    folders = sorted(p.parent.name for p in contract.MODEL_REPOSITORY.glob("*/config.pbtxt"))
    assert folders and sorted(COMMITTED) == folders
    for name, c in COMMITTED.items():
        again = contract.parse_config(contract.to_text(c.config))   # round-trips through the proto
        assert again == c.config, name
        assert c.config.name == name


def test_ensemble_steps_and_pipeline_dependencies_exist():
    for name, c in COMMITTED.items():
        for dep in profiles._dependencies(c):
            assert dep in COMMITTED, f"{name} calls unknown model {dep}"


@pytest.mark.parametrize("profile", profiles.PROFILES)
@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_profiles_keep_names_io_and_batching(profile, name):
    prod = COMMITTED[name].config
    derived = profiles.transform(prod, profile, provenance="x")
    a, b = profiles.summary(prod), profiles.summary(derived)
    assert a == b
    # The round trip through text is what Triton reads.
    assert contract.parse_config(contract.to_text(derived)) == derived
    # max_queue_size (the bound on latency growth) and REJECT are kept in every profile.
    if prod.HasField("dynamic_batching") and prod.dynamic_batching.HasField("default_queue_policy"):
        qp, dq = prod.dynamic_batching.default_queue_policy, derived.dynamic_batching.default_queue_policy
        assert dq.max_queue_size == qp.max_queue_size and dq.timeout_action == qp.timeout_action
        assert dq.default_timeout_microseconds >= qp.default_timeout_microseconds
    assert prod.parameters.get("weights_provenance") is None   # transform does not mutate its input


@pytest.mark.parametrize("name", NETWORK)
def test_cpu_profile_runs_onnx_in_the_python_backend(name):  # (the openvino profile: test_cpu_profile.py)
    prod = COMMITTED[name].config
    cfg = profiles.transform(prod, "cpu", provenance="some weights")
    assert cfg.backend == "python" and cfg.platform == ""
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert not cfg.HasField("optimization")          # no CUDA graphs
    assert all(w.batch_size == 1 for w in cfg.model_warmup) and len(cfg.model_warmup) <= 1
    assert cfg.parameters["weights_provenance"].string_value == "some weights"
    assert int(cfg.parameters["cpu_threads"].string_value) >= 1
    assert cfg.parameters["cpu_runtime"].string_value in ("openvino", "onnxruntime")
    for key in prod.parameters:                       # baked thresholds stay visible
        assert cfg.parameters[key] == prod.parameters[key]
    qp = cfg.dynamic_batching.default_queue_policy
    assert qp.default_timeout_microseconds >= profiles.CPU_MIN_QUEUE_TIMEOUT_US


@pytest.mark.parametrize("name", NETWORK)
def test_onnx_gpu_profile_uses_tensorrt_ep_fp16_with_cache(name):
    prod = COMMITTED[name].config
    cfg = profiles.transform(prod, "onnx-gpu", engine_cache="/cache")
    assert cfg.platform == "onnxruntime_onnx" and cfg.backend == ""
    assert all(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in cfg.instance_group)
    assert not cfg.optimization.HasField("cuda")
    (trt,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt"
    assert trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_engine_cache_enable"] == "1"
    assert trt.parameters["trt_engine_cache_path"] == f"/cache/{name}"
    # one engine profile: every batch, and a variable dim (ppocr_rec's width, face_align's
    # faces) over its whole variable_dim_range, so no request shape rebuilds an engine
    for which, batch in (("min", 1), ("opt", max(prod.dynamic_batching.preferred_batch_size or [0])),
                         ("max", prod.max_batch_size)):
        want = ",".join(f"{t.name}:" + "x".join(map(str, (batch, *t.dims)))
                        for t in COMMITTED[name].with_variable_dims(which).inputs)
        assert trt.parameters[f"trt_profile_{which}_shapes"] == want
    if name == "ppocr_rec":
        lo, _, hi = COMMITTED[name].variable_dim_range
        assert trt.parameters["trt_profile_max_shapes"] == f"crops:{prod.max_batch_size}x48x{hi}x3"
        assert trt.parameters["trt_profile_min_shapes"] == f"crops:1x48x{lo}x3"
    # warmup is kept: on GPU it builds the engines before the model reports ready
    assert list(cfg.model_warmup) == list(prod.model_warmup)
    assert cfg.dynamic_batching == prod.dynamic_batching


@pytest.mark.parametrize("profile", profiles.PROFILES)
def test_ensembles_and_bls_models_are_unchanged(profile):
    for name, c in COMMITTED.items():
        if c.kind == "network":
            continue
        derived = profiles.transform(c.config, profile)
        if profile in profiles.CPU_PROFILES and c.kind == "python":
            # the only change: the queue deadline floor (every model is slower on CPU)
            qp = derived.dynamic_batching.default_queue_policy
            assert qp.default_timeout_microseconds == max(
                profiles.CPU_MIN_QUEUE_TIMEOUT_US, c.config.dynamic_batching.default_queue_policy.default_timeout_microseconds)
            qp.default_timeout_microseconds = c.config.dynamic_batching.default_queue_policy.default_timeout_microseconds
        assert derived == c.config, name


def test_unknown_profile_is_a_user_error():
    with pytest.raises(profiles.ProfileError, match="unknown profile 'tpu'"):
        profiles.transform(COMMITTED["yolo"].config, "tpu")


# -- building folders from a scratch source repository --------------------------------------
@pytest.mark.parametrize("profile", profiles.PROFILES)
def test_derive_builds_a_complete_repository(source, tmp_path, profile):
    d = profiles.derive(profile, dest=tmp_path / profile, source=source)
    assert sorted(d.models) == sorted(COMMITTED) and not d.skipped
    derived = contract.load_all(d.path)
    # plus the encoded entry points' models (serving/encoded.py; tests/unit/test_encoded_entries.py)
    assert d.encoded and sorted(derived) == sorted([*COMMITTED, *d.encoded])
    for name, c in derived.items():
        assert c.version_dir().is_dir(), name
        if name in d.encoded:
            continue        # ensembles need an (empty) version folder
        assert profiles.summary(c.config) == profiles.summary(COMMITTED[name].config)
        if COMMITTED[name].kind == "network":
            assert c.config.parameters["weights_provenance"].string_value == f"weights of {name}"
            assert (c.version_dir() / "model.onnx").read_bytes() == b"onnx"
            if profile == "cpu":
                assert (c.version_dir() / "model.py").read_text() == profiles.ONNX_RUNNER
    assert (d.path / "ocr" / "1" / "charset.txt").read_text() == "a\nb\n"
    if profile != "cpu":   # shippable: no links back into this checkout
        assert not any(p.is_symlink() for p in d.path.rglob("*"))
    # Deriving again replaces the folder (no stale models left behind).
    (source / "yolo" / "1" / "model.onnx").unlink()
    d2 = profiles.derive(profile, dest=tmp_path / profile, source=source, skip_missing=True)
    assert "yolo" not in d2.models and not (d2.path / "yolo").exists()
    assert not (d2.path / "yolo_encoded").exists() and "yolo_encoded" not in d2.encoded


def test_missing_artifact_names_the_file_and_the_command(source, tmp_path):
    (source / "scrfd" / "1" / "model.onnx").unlink()
    with pytest.raises(profiles.ProfileError) as err:
        profiles.derive("cpu", dest=tmp_path / "cpu", source=source)
    msg = str(err.value)
    assert "scrfd/1/model.onnx" in msg and "make export-onnx MODELS=scrfd" in msg
    assert not (tmp_path / "cpu").exists()


def test_skip_missing_drops_the_pipelines_that_need_it(source, tmp_path):
    (source / "mobileclip_image" / "1" / "model.onnx").unlink()
    d = profiles.derive("cpu", dest=tmp_path / "cpu", source=source, skip_missing=True)
    assert set(d.skipped) == {"mobileclip_image", "detect_embed", "analyze"}
    assert "model.onnx" in d.skipped["mobileclip_image"]
    assert "faces" in d.models and "yolo" in d.models


def test_subset_pulls_in_what_pipelines_call(source, tmp_path):
    d = profiles.derive("cpu", dest=tmp_path / "cpu", source=source, models=["faces", "text_embed"])
    assert set(d.models) == {"faces", "scrfd", "face_align", "arcface", "text_embed",
                             "clip_tokenizer", "mobileclip_text"}


# -- the embedded tritonserver command line ---------------------------------------------------
def test_server_command_is_hardened_and_loopback_only(tmp_path):
    fake = TritonInstall(Path("/x/tritonserver"), Path("/x/libs"), Path("/x/py"), Path("/x/stub"))
    s = TritonServer(tmp_path, 18000, 18001, 18002, admin_key="k3y")
    cmd = s.command(fake)
    assert "--model-control-mode=none" in cmd
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--http-port=18000", "--grpc-port=18001", "--metrics-port=18002"):
        assert flag in cmd
    restricted = "model-repository,shared-memory,statistics,trace,logging:admin-key=k3y"
    assert f"--http-restricted-api={restricted}" in cmd and f"--grpc-restricted-protocol={restricted}" in cmd
    assert s.grpc_url == "127.0.0.1:18001" and s.metrics_url == "http://127.0.0.1:18002/metrics"
    assert TritonServer(tmp_path).admin_key != TritonServer(tmp_path).admin_key   # random by default


def test_missing_install_says_how_to_get_it(tmp_path):
    with pytest.raises(TritonServerError, match="nvidia-pytriton"):
        TritonInstall.locate(tmp_path)


# -- the CLI behind `make serve` / `make derive` ------------------------------------------------
def test_cli_derive_and_refusals(source, tmp_path, capsys):
    from serving.run import main

    assert main(["derive", "--profile", "onnx-gpu", "--source", str(source), "--dest", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "yolo" / "config.pbtxt").is_file()
    # the embedded server has only the python backend: say where onnx-gpu runs instead
    assert main(["serve", "--profile", "onnx-gpu", "--source", str(source)]) == 2
    assert "GPU Triton" in capsys.readouterr().err
    (source / "arcface" / "1" / "model.onnx").unlink()
    assert main(["derive", "--source", str(source), "--dest", str(tmp_path / "c")]) == 2
    assert "make export-onnx MODELS=arcface" in capsys.readouterr().err


def test_free_port_never_hands_out_a_port_twice(monkeypatch):
    """The kernel may give the same ephemeral port to two binds in a row; Triton refuses
    HTTP and gRPC on one port (CI once drew it for both). Here the kernel is a fake that
    answers 41001, 41001, 41002."""
    from serving import tritonserver

    answers = iter([41001, 41001, 41002])

    class Kernel:
        def __init__(self, *a):
            self.port = next(answers)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def bind(self, address):
            pass

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(tritonserver.socket, "socket", Kernel)
    monkeypatch.setattr(tritonserver, "_HANDED_OUT", set())
    assert [tritonserver.free_port(), tritonserver.free_port()] == [41001, 41002]
