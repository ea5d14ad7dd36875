"""MobileCLIP2-S2 encoders and clip_resize: exported ONNX vs open_clip / cv2, batching, contract.

The three graphs are exported once per session through the runner, which reuses
model_repository/<m>/1/model.onnx when export.json says it is up to date (`make test`
exports first, so CI pays the export once).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest


pytest.importorskip("open_clip", reason="open_clip (export extra) is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

import contract as contract_mod  # noqa: E402
from export import mobileclip, registry  # noqa: E402
from export.base import ExportJob, WeightsSearch, WeightsSource  # noqa: E402
from tests.conftest import MODEL_REPOSITORY  # noqa: E402

pytestmark = pytest.mark.slow
COS_MIN = 0.9999
MAX_ABS = 1e-4        # observed ~2e-7 (float32 ORT vs torch)
ONNX_TO_NP = {1: np.float32, 2: np.uint8, 6: np.int32}


def _search() -> WeightsSearch:
    """The same weights search as `make export-onnx` (VISIONSERVE_WEIGHTS_DIR), so exports are reused."""
    from export.__main__ import parse_args, weights_search

    return weights_search(parse_args([]))


@pytest.fixture(scope="session")
def exported():
    from export.runner import export_one

    search = _search()
    return {m: export_one(m, search, MODEL_REPOSITORY) for m in registry.family_models('mobileclip')}


@pytest.fixture(scope="session")
def sessions(exported):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return {m: ort.InferenceSession(str(r.path), opts, providers=["CPUExecutionProvider"]) for m, r in exported.items()}


def _reference(model: str):
    c = contract_mod.load(model, MODEL_REPOSITORY)
    with tempfile.TemporaryDirectory() as tmp:
        job = ExportJob(c, Path(tmp) / "unused.onnx", registry.resolve_weights(model, _search()), Path(tmp))
        return mobileclip.reference(job)


def _run(sess, x):
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def images():
    return mobileclip.sample_images(np.random.default_rng(7), 8, 256, 256)


@pytest.fixture(scope="module")
def tokens():
    return mobileclip.sample_tokens(8, 77)


@pytest.mark.parametrize("model", registry.family_models('mobileclip'))
def test_graph_matches_config(exported, model):
    import onnx

    c = contract_mod.load(model, MODEL_REPOSITORY)
    g = onnx.load(str(exported[model].path), load_external_data=False).graph
    assert [i.name for i in g.input] == [t.name for t in c.inputs]
    assert [o.name for o in g.output] == [t.name for t in c.outputs]
    for tensors, specs in ((g.input, c.inputs), (g.output, c.outputs)):
        for t, spec in zip(tensors, specs):
            tt = t.type.tensor_type
            dims = tt.shape.dim
            assert ONNX_TO_NP[tt.elem_type] == spec.dtype, t.name
            assert dims[0].dim_param == "batch", f"{t.name}: batch axis not dynamic"
            assert tuple(d.dim_value for d in dims[1:]) == spec.dims, t.name
    assert exported[model].path.stat().st_size < 2 * 1024 ** 3     # single file, no external data
    assert not exported[model].path.with_name("model.onnx.data").exists()


@pytest.mark.parametrize("model", ["mobileclip_image", "mobileclip_text"])
def test_encoder_matches_open_clip(sessions, images, tokens, model):
    x = images if model == "mobileclip_image" else tokens
    ref = _reference(model)
    got8 = _run(sessions[model], x)
    want8 = ref({sessions[model].get_inputs()[0].name: x})["embeddings"]
    got1 = _run(sessions[model], x[:1])
    for got, want in ((got1, want8[:1]), (got8, want8)):
        cos = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > COS_MIN, f"cosine {cos.min():.6f}"
        assert np.abs(got - want).max() < MAX_ABS, f"max abs diff {np.abs(got - want).max():.2e}"
    # not vacuous: different inputs give clearly different embeddings (also for synthetic weights)
    gram = got8 @ got8.T
    assert gram[~np.eye(len(gram), dtype=bool)].min() < 0.99


@pytest.mark.parametrize("model", ["mobileclip_image", "mobileclip_text"])
def test_batch_invariance_and_unit_norm(sessions, images, tokens, model):
    x = images if model == "mobileclip_image" else tokens
    batch = _run(sessions[model], x)
    singles = np.concatenate([_run(sessions[model], x[i:i + 1]) for i in range(len(x))])
    assert batch.shape == (8, 512) and batch.dtype == np.float32
    assert np.abs(batch - singles).max() < 1e-5
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_text_pooling_follows_the_end_token(sessions, tokens):
    """argmax pooling with a dynamic batch: rows of different lengths, reordered, keep their values."""
    sess = sessions["mobileclip_text"]
    lengths = (tokens == 49407).argmax(axis=1)
    assert len(set(lengths.tolist())) > 3        # the sample has varied end positions
    order = np.arange(len(tokens))[::-1]
    a, b = _run(sess, tokens), _run(sess, np.ascontiguousarray(tokens[order]))
    assert np.abs(a[order] - b).max() < 1e-5


def test_clip_resize_matches_cv2_bilinear(sessions):
    rng = np.random.default_rng(3)
    frames = mobileclip.sample_images(rng, 3, 640, 640)
    frames[2] = 77                                # flat stays flat
    ref = _reference("clip_resize")
    out = _run(sessions["clip_resize"], frames)
    want = ref({"images": frames})["clip_images"]
    assert out.dtype == np.uint8 and out.shape == (3, 256, 256, 3)
    diff = np.abs(out.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01   # only rounding ties may differ
    assert (out[2] == 77).all()
    assert np.array_equal(_run(sessions["clip_resize"], frames[1:2]), out[1:2])


def test_tokenizer_vocabulary_written_for_triton(exported):
    from open_clip.tokenizer import default_bpe

    from pipelines.clip_tokenizer import VOCAB_FILE

    dest = MODEL_REPOSITORY / "clip_tokenizer" / "1" / VOCAB_FILE
    assert dest.is_file(), "mobileclip_text export must place the vocabulary beside the tokenizer model"
    assert dest.read_bytes() == Path(default_bpe()).read_bytes()


def test_weights_resolution(tmp_path):
    assert registry.resolve_weights("mobileclip_image", WeightsSearch(dirs=(tmp_path,))).synthetic
    assert registry.resolve_weights("clip_resize", WeightsSearch()).kind == "constant"
    ckpt = tmp_path / "mobileclip2_s2.pt"
    ckpt.write_bytes(b"x")
    for m in ("mobileclip_image", "mobileclip_text"):
        w = registry.resolve_weights(m, WeightsSearch(dirs=(tmp_path,)))
        assert w.kind == "file" and w.path == ckpt
    # one checkpoint holds both towers: --weights for either model serves both
    other = tmp_path / "custom.bin"
    other.write_bytes(b"x")
    w = registry.resolve_weights("mobileclip_text", WeightsSearch(explicit={"mobileclip_image": other}))
    assert w.path == other


def test_loads_a_real_open_clip_checkpoint(tmp_path):
    """A checkpoint file is loaded (not silently replaced by random weights)."""
    import torch

    src = mobileclip.load_model(WeightsSource("synthetic", "t", seed=5), tower="text")
    ckpt = tmp_path / "mobileclip2_s2_test.pt"
    torch.save(src.state_dict(), ckpt)
    loaded = mobileclip.load_model(WeightsSource("file", "test checkpoint", ckpt), tower="text")
    assert torch.equal(loaded.text.token_embedding.weight, src.text.token_embedding.weight)
    assert torch.equal(loaded.visual.trunk.stem[0].conv_kxk[0].conv.weight, src.visual.trunk.stem[0].conv_kxk[0].conv.weight)
    assert not loaded.training
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    from export.base import ExportError
    with pytest.raises(ExportError, match="not an open_clip"):
        mobileclip.load_model(WeightsSource("file", "broken", tmp_path / "broken.pt"))
