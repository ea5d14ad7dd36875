"""Small ONNX models and a throw-away model repository for the engine tests (no exports).

`tinyface` mimics arcface: uint8 NHWC in, normalisation, Conv/Gemm body, final L2 norm.
`tinydet` mimics a detector tail: Conv body, sigmoid scores, TopK, int32 indices.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

TINYFACE_CONFIG = """
name: "tinyface"
platform: "tensorrt_plan"
max_batch_size: 8
input [ { name: "faces" data_type: TYPE_UINT8 dims: [ 16, 16, 3 ] } ]
output [ { name: "embeddings" data_type: TYPE_FP32 dims: [ 32 ] } ]
dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 1000 }
"""

TINYDET_CONFIG = """
name: "tinydet"
platform: "tensorrt_plan"
max_batch_size: 4
input [ { name: "images" data_type: TYPE_UINT8 dims: [ 16, 16, 3 ] } ]
output [
  { name: "scores" data_type: TYPE_FP32 dims: [ 5 ] },
  { name: "classes" data_type: TYPE_INT32 dims: [ 5 ] }
]
"""

PYTHON_CONFIG = """
name: "pyonly"
backend: "python"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def _const(name, arr):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr), name)


def tinyface_onnx(seed: int = 0, scale: float = 1.0):
    """[B,16,16,3] uint8 -> [B,32] unit-norm float (opset 17)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [_const("mean", np.float32(127.5)), _const("inv_std", np.float32(1 / 128)),
             _const("conv_w", (rng.normal(0, 0.2, (8, 3, 4, 4)) * scale).astype(np.float32)),
             _const("conv_b", rng.normal(0, 0.1, 8).astype(np.float32)),
             _const("fc_w", rng.normal(0, 0.1, (32, 128)).astype(np.float32)),
             _const("fc_b", rng.normal(0, 0.1, 32).astype(np.float32))]
    nodes = [
        helper.make_node("Cast", ["faces"], ["f"], to=TensorProto.FLOAT, name="/pre/Cast"),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2], name="/pre/Transpose"),
        helper.make_node("Sub", ["nchw", "mean"], ["centered"], name="/pre/Sub"),
        helper.make_node("Mul", ["centered", "inv_std"], ["x"], name="/pre/Mul"),
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], strides=[4, 4], name="/body/Conv"),
        helper.make_node("Relu", ["c"], ["r"], name="/body/Relu"),
        helper.make_node("Flatten", ["r"], ["flat"], axis=1, name="/body/Flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["emb"], transB=1, name="/body/Gemm"),
        helper.make_node("ReduceL2", ["emb"], ["norm"], axes=[1], keepdims=1, name="/head/ReduceL2"),
        helper.make_node("Div", ["emb", "norm"], ["embeddings"], name="/head/Div"),
    ]
    graph = helper.make_graph(
        nodes, "tinyface",
        [helper.make_tensor_value_info("faces", TensorProto.UINT8, ["batch", 16, 16, 3])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 32])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def tinydet_onnx(seed: int = 1):
    """[B,16,16,3] uint8 -> top-5 sigmoid scores [B,5] and their int32 cell ids [B,5]."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [_const("conv_w", rng.normal(0, 0.05, (1, 3, 4, 4)).astype(np.float32)),
             _const("k", np.array([5], np.int64))]
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w"], ["c"], strides=[4, 4]),
        helper.make_node("Flatten", ["c"], ["flat"], axis=1),
        helper.make_node("Sigmoid", ["flat"], ["prob"]),
        helper.make_node("TopK", ["prob", "k"], ["scores", "idx"], axis=1),
        helper.make_node("Cast", ["idx"], ["classes"], to=TensorProto.INT32),
    ]
    graph = helper.make_graph(
        nodes, "tinydet",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 16, 16, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 5]),
         helper.make_tensor_value_info("classes", TensorProto.INT32, ["batch", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def make_repository(root: Path, with_onnx: bool = True) -> Path:
    """root/model_repository with tinyface, tinydet (tensorrt_plan) and pyonly (python)."""
    import onnx

    repo = root / "model_repository"
    for name, cfg, model in (("tinyface", TINYFACE_CONFIG, tinyface_onnx), ("tinydet", TINYDET_CONFIG, tinydet_onnx),
                             ("pyonly", PYTHON_CONFIG, None)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(cfg)
        if with_onnx and model is not None:
            onnx.save(model(), str(repo / name / "1" / "model.onnx"))
    return repo
