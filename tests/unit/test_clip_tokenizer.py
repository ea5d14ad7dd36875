"""pipelines/clip_tokenizer.py against open_clip's MobileCLIP2-S2 tokenizer, and the Triton
python-backend model `clip_tokenizer` driven through a minimal stand-in for pb_utils."""
from __future__ import annotations

import importlib.util
import shutil
import sys
import types

import numpy as np
import pytest

from pipelines.clip_tokenizer import VOCAB_FILE, ClipTokenizer, TokenizerError, VocabularyError, default_vocab_path
from tests.conftest import MODEL_REPOSITORY
from tests.unit.bls_harness import forget_backend_modules

TEXTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "two dogs playing in the snow at night",
    "Hello, world! How's it going? I'm fine; you'll see. We've, they're, he'd.",
    "naïve café résumé Ångström",
    "日本語のテキストです",
    "中文字符测试",
    "Привет, мир",
    "مرحبا بالعالم",
    "emoji 😀 🐱‍👤 👍🏽 🇫🇷 party 🎉🎉",
    "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; &quot;quoted&quot;",
    "<start_of_text> inside <END_OF_TEXT> text",
    "tabs\tand\nnew\r\nlines   and    spaces",
    "numbers 1234567890 3.14159 1e-5 #42 $100 50%",
    "Ｆｕｌｌｗｉｄｔｈ ｃｈａｒｓ",
    "mojibake: Ã©tÃ© cafÃ©",
    "\u200bzero\u200bwidth\u00a0nbsp",
    "punctuation!!!???...---;;;:::",
    "URL https://example.com/path?q=1&x=y",
    "e-mail someone@example.org",
    "CamelCaseWordsAndALLCAPS",
    "x",
    "a" * 76,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(["word"] * 74),          # 74 tokens + sot/eot = 76: no truncation
    " ".join(["word"] * 75),          # exactly 77
    " ".join(["word"] * 76),          # one too many: truncated, end token kept
    "A red car parked next to a fire hydrant on a busy street. " * 20,
    "🙂" * 100,
    "é" * 300,
]


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    open_clip = pytest.importorskip("open_clip", reason="open_clip (export extra) is not installed")
    return open_clip.get_tokenizer("MobileCLIP2-S2")


@pytest.fixture(scope="module")
def vocab_path():
    """open_clip's vocabulary file, else the one the export placed in the repository."""
    try:
        from open_clip.tokenizer import default_bpe
        return default_bpe()
    except ImportError:
        p = default_vocab_path()
        if not p.is_file():
            pytest.skip(f"no CLIP vocabulary: open_clip is not installed and {p} is missing "
                        f"(run `python -m export --models mobileclip_text`)")
        return p


@pytest.fixture(scope="module")
def tok(vocab_path):
    return ClipTokenizer(vocab_path)


def test_ids_equal_open_clip(tok, open_clip_tokenizer):
    ours = tok(TEXTS)
    ref = open_clip_tokenizer(TEXTS).numpy()
    assert ours.dtype == np.int32 and ours.shape == (len(TEXTS), 77)
    mismatched = [TEXTS[i][:40] for i in range(len(TEXTS)) if not np.array_equal(ours[i], ref[i])]
    assert not mismatched, f"token ids differ from open_clip for: {mismatched}"


def test_truncation_keeps_end_token(tok, open_clip_tokenizer):
    rows = tok([" ".join(["word"] * 75), " ".join(["word"] * 76), "é" * 300])
    assert (rows[:, -1] == tok.eot_token_id).all()
    assert (rows[:, 0] == tok.sot_token_id).all()
    assert (rows[1, 1:76] == rows[0, 1:76]).all()
    short = tok(["a photo of a cat"])[0]
    n = int(np.argmax(short == tok.eot_token_id))
    assert n == 6 and (short[n + 1:] == 0).all()
    # the end token is the largest id of a row: the text encoder pools at its argmax
    assert (rows.argmax(axis=1) == 76).all() and short.argmax() == n


def test_bytes_and_str_give_the_same_ids(tok):
    texts = ["naïve café", "emoji 😀"]
    assert np.array_equal(tok(texts), tok([t.encode("utf-8") for t in texts]))
    assert np.array_equal(tok(texts), tok(np.array([t.encode() for t in texts], dtype=object)))


@pytest.mark.parametrize("bad, words", [
    ("", "empty"), ("   \n\t", "empty"), (b"\xff\xfe broken", "UTF-8"), (123, "expected a string"),
    (None, "expected a string"), ("\ud800 lone surrogate", "UTF-8"), ("a" * 20000, "limit"),
])
def test_invalid_text_is_a_tokenizer_error(tok, bad, words):
    with pytest.raises(TokenizerError, match=words) as info:
        tok(["fine", bad])
    assert info.value.index == 1 and isinstance(info.value, ValueError)


def test_checked_batch_keeps_good_rows(tok):
    rows, errors = tok.tokenize_checked(["a cat", b"\xc3\x28", "", "a dog"])
    assert [e is None for e in errors] == [True, False, False, True]
    assert np.array_equal(rows[[0, 3]], tok(["a cat", "a dog"]))
    assert not rows[[1, 2]].any()


def test_empty_batch_is_an_error(tok):
    with pytest.raises(TokenizerError):
        tok([])


def test_missing_or_bad_vocabulary_is_a_deployment_error(tmp_path):
    with pytest.raises(VocabularyError, match="export"):
        ClipTokenizer(tmp_path / VOCAB_FILE)
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(VocabularyError):
        ClipTokenizer(tmp_path / "bad.txt.gz")


def test_serving_module_does_not_import_torch():
    import subprocess

    code = ("import sys, pipelines.clip_tokenizer as t; t.ClipTokenizer; "
            "sys.exit(1 if ('torch' in sys.modules or 'open_clip' in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ---------------------------------------------------------------- Triton python-backend model

def _fake_pb_utils() -> types.ModuleType:
    """Only the containers the python backend gives a model: no tokenizer logic lives here."""
    pb = types.ModuleType("triton_python_backend_utils")

    class TritonError(Exception):
        INVALID_ARG = "INVALID_ARG"

        def __init__(self, message, code=None):
            super().__init__(message)
            self.code = code

        def message(self):
            return self.args[0]

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, array

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.output_tensors, self.error = list(output_tensors), error

    class Request:
        def __init__(self, tensors):
            self._tensors = tensors

        def inputs(self):
            return self._tensors

    def get_input_tensor_by_name(request, name):
        return next((t for t in request.inputs() if t.name() == name), None)

    pb.TritonError, pb.Tensor, pb.InferenceResponse, pb.Request = TritonError, Tensor, InferenceResponse, Request
    pb.TritonModelException = type("TritonModelException", (Exception,), {})
    pb.get_input_tensor_by_name = get_input_tensor_by_name
    return pb


@pytest.fixture()
def triton_model(tmp_path, monkeypatch, vocab_path):
    pb = _fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    forget_backend_modules()
    src = MODEL_REPOSITORY / "clip_tokenizer" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("clip_tokenizer_triton_model", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "1").mkdir()
    shutil.copyfile(vocab_path, tmp_path / "1" / VOCAB_FILE)
    config = (MODEL_REPOSITORY / "clip_tokenizer" / "config.pbtxt").read_text()
    from google.protobuf import json_format

    from contract import parse_config
    cfg = json_format.MessageToJson(parse_config(config), preserving_proto_field_name=True)
    model = mod.TritonPythonModel()
    model.initialize({"model_config": cfg, "model_repository": str(tmp_path), "model_version": "1"})
    return model, pb


def _request(pb, texts):
    arr = np.array([[t.encode("utf-8") if isinstance(t, str) else t] for t in texts], dtype=object)
    return pb.Request([pb.Tensor("text", arr)])


def test_triton_model_batches_requests_and_isolates_bad_ones(triton_model, tok):
    model, pb = triton_model
    good1, bad, good2 = ["a cat", "naïve café 😀"], ["fine", b"\xff"], ["x" * 500, "two dogs", "a"]
    responses = model.execute([_request(pb, good1), _request(pb, bad), _request(pb, good2)])
    assert len(responses) == 3
    for resp, texts in ((responses[0], good1), (responses[2], good2)):
        assert resp.error is None
        (out,) = resp.output_tensors
        assert out.name() == "tokens" and out.as_numpy().dtype == np.int32
        assert np.array_equal(out.as_numpy(), tok(texts))
    err = responses[1].error
    assert isinstance(err, pb.TritonError) and err.code == pb.TritonError.INVALID_ARG
    assert "text[1]" in err.message() and "UTF-8" in err.message() and not responses[1].output_tensors


def test_triton_model_reports_missing_vocabulary(tmp_path, monkeypatch):
    pb = _fake_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    forget_backend_modules()
    src = MODEL_REPOSITORY / "clip_tokenizer" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("clip_tokenizer_triton_model2", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = '{"name": "clip_tokenizer", "input": [{"name": "text"}], "output": [{"name": "tokens", "dims": ["77"]}]}'
    with pytest.raises(pb.TritonModelException, match="vocabulary"):
        mod.TritonPythonModel().initialize({"model_config": cfg, "model_repository": str(tmp_path),
                                            "model_version": "1"})
