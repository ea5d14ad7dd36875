"""The FP32-keep rule on small graphs, and that marking changes no computation."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from export.engines.precision import MARK, fp32_nodes, marked_copy
from tests.support.engines import tinydet_onnx, tinyface_onnx


def test_head_and_tail_stay_fp32_body_does_not():
    plan = fp32_nodes(tinyface_onnx(), "tinyface")
    assert plan.fp16
    assert set(plan.fp32_nodes) == {"/pre/Cast", "/pre/Transpose", "/pre/Sub", "/pre/Mul",
                                    "/head/ReduceL2", "/head/Div"}
    assert plan.reasons == {"head": 4, "op:ReduceL2": 1, "tail": 1}
    assert plan.flags()["fp32_layers"] == 6 and len(plan.flags()["fp32_layers_digest"]) == 16


def test_topk_region_and_int_only_nodes():
    plan = fp32_nodes(tinydet_onnx(), "tinydet")
    kept = set(plan.fp32_nodes)
    # unnamed nodes get stable names: <op>_<index>
    assert {"Cast_0", "Transpose_1", "Sigmoid_4", "TopK_5"} <= kept
    assert "Conv_2" not in kept                      # body
    assert "Cast_6" not in kept                      # int64 -> int32 cast touches no float
    assert "Flatten_3" in kept                       # after the last compute layer: tail
    assert plan.reasons == {"head": 2, "tail": 2, "op:TopK": 1}


def test_name_patterns_and_fp32_only_models():
    body_named = fp32_nodes(tinyface_onnx(), "tinyface", name_patterns=("/body/Relu",))
    assert "/body/Relu" in body_named.fp32_nodes and body_named.reasons["name"] == 1
    whole = fp32_nodes(tinyface_onnx(), "face_align")
    assert not whole.fp16 and whole.fp32_nodes == () and whole.flags()["fp16"] is False


def test_marked_copy_renames_only_the_kept_nodes_and_computes_the_same(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(tinyface_onnx(), str(src))
    plan = fp32_nodes(onnx.load(str(src)), "tinyface")
    dst = marked_copy(src, tmp_path / "marked.onnx", plan)
    names = [n.name for n in onnx.load(str(dst)).graph.node]
    assert sorted(n[len(MARK):] for n in names if n.startswith(MARK)) == sorted(plan.fp32_nodes)
    assert "/body/Conv" in names
    x = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    a = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"faces": x})[0]
    b = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"faces": x})[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)


def test_weight_only_subgraphs_are_left_to_tensorrt():
    from onnx import helper

    m = tinyface_onnx()
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    conv.input[1] = "conv_w_shared"
    m.graph.node.insert(0, helper.make_node("Identity", ["conv_w"], ["conv_w_shared"], name="/weights/Identity"))
    onnx.checker.check_model(m)
    plan = fp32_nodes(m, "tinyface")
    assert "/weights/Identity" not in plan.fp32_nodes          # no graph input upstream: constant folding
    assert plan.reasons == {"head": 4, "op:ReduceL2": 1, "tail": 1}
