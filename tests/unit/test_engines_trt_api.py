"""The TensorRT Python builder against a stand-in `tensorrt` module that records what is
asked of it: the builder config (TF32 cleared, FP16 and precision constraints only for FP16
plans, the profile), which layers are pinned to FP32, and the TensorRT version guard."""
from __future__ import annotations

import sys
import types

import onnx
import pytest

from export.engines import trt_api
from export.engines.errors import UnsupportedTensorRT
from export.engines.precision import PrecisionPlan, fp32_nodes, marked_copy
from export.engines.shapes import derive_shapes
from export.engines.request import BuildRequest
import contract
from tests.support.engines import make_repository


class _Tensor:
    def __init__(self, dtype):
        self.dtype = dtype


class _Layer:
    def __init__(self, name, trt):
        self.name, self.type, self.metadata = name, "ELEMENTWISE", ""
        self.num_inputs = self.num_outputs = 1
        self._in, self._out = _Tensor(trt.float32), _Tensor(trt.float32)
        self.precision, self.output_types = None, {}

    def get_input(self, i):
        return self._in

    def get_output(self, i):
        return self._out

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class _Config:
    def __init__(self):
        self.set_flags, self.cleared_flags, self.profiles, self.pools = [], [], [], {}
        self.builder_optimization_level = None

    def set_flag(self, flag):
        self.set_flags.append(flag)

    def clear_flag(self, flag):
        self.cleared_flags.append(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def create_timing_cache(self, data):
        return types.SimpleNamespace(serialize=lambda: b"cache", combine=lambda other, ignore: True)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache

    def get_timing_cache(self):
        return self.timing_cache


def fake_tensorrt(version: str):
    """A module with the parts of the TensorRT 10 Python API the builder uses."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16, trt.int32 = "float32", "float16", "int32"
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", TF32="TF32", OBEY_PRECISION_CONSTRAINTS="OBEY")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.LayerType = types.SimpleNamespace(CONSTANT="CONSTANT", SHAPE="SHAPE")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3)

        def __init__(self):
            pass

    trt.ILogger = ILogger
    trt.built = []

    class Network:
        def __init__(self):
            self.layers = []

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):     # TensorRT names layers after the ONNX nodes
            self.network.layers = [_Layer(n.name, trt) for n in onnx.load(path).graph.node]
            return True

    class ShapeRanges:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            trt.built.append(self)

        def create_network(self, flags):
            self.network = Network()
            return self.network

        def create_builder_config(self):
            self.config = _Config()
            return self.config

        def create_optimization_profile(self):
            return ShapeRanges()

        def build_serialized_network(self, network, config):
            return b"\x00" * 128

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


def _request(tmp_path, model: str, precision: PrecisionPlan | None = None) -> BuildRequest:
    repo = make_repository(tmp_path)
    src = repo / "tinyface" / "1" / "model.onnx"
    plan = precision or fp32_nodes(onnx.load(str(src)), "tinyface")
    marked = marked_copy(src, tmp_path / "marked.onnx", plan)
    return BuildRequest(model, marked, derive_shapes(contract.load("tinyface", repo)), plan,
                        tmp_path / "tc" / "x.cache", log=lambda m: None)


@pytest.fixture
def trt10(monkeypatch):
    trt = fake_tensorrt("10.14.1.48")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def test_fp16_plan_clears_tf32_and_pins_the_marked_layers(trt10, tmp_path):
    req = _request(tmp_path, "tinyface")
    out = trt_api.build(req)
    assert (out.tensorrt_version, out.builder) == ("10.14.1", "tensorrt-python")
    config = trt10.built[0].config
    assert config.cleared_flags == ["TF32"] and "TF32" not in config.set_flags
    assert config.set_flags == ["FP16", "OBEY"]
    assert config.pools == {"WORKSPACE": req.workspace_mb << 20} and config.builder_optimization_level == 3
    assert config.profiles[0].shapes == {"faces": ((1, 16, 16, 3), (4, 16, 16, 3), (8, 16, 16, 3))}
    layers = trt10.built[0].network.layers
    pinned = {layer.name for layer in layers if layer.precision == "float32"}
    assert pinned == {"KEEPFP32__" + n for n in req.precision.fp32_nodes} and pinned
    assert all(layer.output_types == {0: "float32"} for layer in layers if layer.name in pinned)
    assert all(layer.precision is None for layer in layers if layer.name not in pinned)   # the body: FP16


def test_fp32_only_plan_clears_tf32_and_asks_for_no_fp16(trt10, tmp_path):
    trt_api.build(_request(tmp_path, "face_align", PrecisionPlan(False, (), {"fp32-only": 10})))
    config = trt10.built[0].config
    assert config.cleared_flags == ["TF32"] and config.set_flags == []


@pytest.mark.parametrize("version", ["11.0.0.114", "8.5.3.1"])
def test_an_unsupported_tensorrt_is_refused_before_building(monkeypatch, tmp_path, version):
    trt = fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(UnsupportedTensorRT, match=rf"TensorRT {version[:6]}.* not supported") as err:
        trt_api.build(_request(tmp_path, "tinyface"))
    assert trt.built == []
    if version.startswith("11"):
        assert "removed BuilderFlag.FP16" in str(err.value)
