"""Face compare's arithmetic and bodies (gateway/compare.py, gateway/pairs.py), the contract's
match threshold (contract/facts.py, RouteTable.match_threshold) and the route on the fake
Triton: one call per pair, every body form, every error with its stable code."""
from __future__ import annotations

import base64
import math
import re
import shutil
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import contract
from contract import ContractError
from contract.routes import from_contracts, route_table
from gateway import compare
from gateway.errors import FaceIndexOutOfRange, InvalidEmbedding, NoFace
from gateway.pairs import pair_of
from gateway.errors import MissingPart
from tests.support.fakes import JPEG, VectorFake, app_client
from tests.unit.fuzzing import fuzz_settings

PATH = route_table().route("faces/compare").path
D = 512


def packed(vec) -> bytes:
    """The reference encoding, written with struct (not numpy): little-endian float32."""
    return struct.pack(f"<{len(vec)}f", *vec)


def b64(vec) -> str:
    return base64.b64encode(packed(vec)).decode()


def unit(seed: int, d: int = D) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(d)
    return (v / np.linalg.norm(v)).astype(np.float32).tolist()


# ---- the contract --------------------------------------------------------------------

def test_the_threshold_is_the_embedders_parameter_for_every_faces_pipeline():
    table = route_table()
    text = (contract.MODEL_REPOSITORY / "arcface" / "config.pbtxt").read_text()
    stated = float(text.split('key: "match_threshold"')[1].split('string_value: "')[1].split('"')[0])
    route = table.route("faces/compare")
    assert route.pair and route.choices == table.route("faces").choices
    for m in route.models:
        assert table.match_threshold(m.model) == (stated, "arcface")
    assert table.match_threshold("yolo") is None
    assert table.models.count("faces") == 1          # two routes, one model
    assert table.endpoint("faces") == "/v1/faces"


def _repo(tmp_path, arcface=None, faces_route=None):
    repo = tmp_path / "repo"
    shutil.copytree(contract.MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns("*.onnx", "*.plan"))
    if arcface is not None:
        p = repo / "arcface" / "config.pbtxt"
        text, n = re.subn(r'(key: "match_threshold"\s*value \{ string_value: )"[^"]*"', rf'\1"{arcface}"',
                          p.read_text())
        assert n == 1
        p.write_text(text)
    if faces_route is not None:
        for m in ("faces", "faces_scrfd_500m"):
            p = repo / m / "config.pbtxt"
            p.write_text(p.read_text().replace('"faces,faces/compare"', f'"{faces_route}"'))
    return repo


@pytest.mark.parametrize("bad", ["1.5", "-2", "abc", "nan"])
def test_a_malformed_match_threshold_is_refused_naming_it(tmp_path, bad):
    with pytest.raises(ContractError, match="match_threshold"):
        from_contracts(contract.load_all(_repo(tmp_path, arcface=bad)))


def test_a_compare_route_whose_models_reach_no_threshold_is_refused(tmp_path):
    repo = _repo(tmp_path)
    p = repo / "arcface" / "config.pbtxt"
    text = p.read_text()
    start = text.index("parameters {\n  key: \"match_threshold\"")
    p.write_text(text[:start] + text[text.index("}\n}\n", start) + 4:])
    with pytest.raises(ContractError, match="faces/compare.*match_threshold"):
        from_contracts(contract.load_all(repo))


def test_a_route_named_twice_is_refused(tmp_path):
    with pytest.raises(ContractError, match="twice"):
        from_contracts(contract.load_all(_repo(tmp_path, faces_route="faces,faces")))


def test_the_route_answers_the_threshold_its_repository_states(tmp_path):
    """Changing the config changes the route's verdict and /v1/models: nothing is hard-coded."""
    repo = _repo(tmp_path, arcface="-1")
    with app_client(VectorFake(), contract_repository=repo) as client:
        r = client.post(PATH, files=_files())
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert r.status_code == 200, r.text
    assert r.json()["threshold"]["value"] == -1.0 and r.json()["match"] is True
    assert models["faces"]["match_threshold"]["value"] == -1.0


# ---- the arithmetic ------------------------------------------------------------------

BOXES = np.array([[0, 0, 10, 10], [0, 0, 30, 5], [5, 5, 25, 25], [0, 0, 99, 99]], np.float32)


def test_the_largest_face_by_area_is_chosen_among_the_kept_ones():
    assert compare.choose(BOXES, 3, None, "a") == 2       # 400 > 150 > 100; row 3 not kept
    assert compare.choose(BOXES, 4, None, "a") == 3
    assert compare.choose(BOXES[[1, 1]], 2, None, "a") == 0   # equals: the first
    assert compare.choose(BOXES, 3, 1, "b") == 1


def test_no_face_and_an_index_out_of_range_name_the_image():
    with pytest.raises(NoFace, match="'b'"):
        compare.choose(BOXES, 0, None, "b")
    with pytest.raises(FaceIndexOutOfRange, match="face_a=3.*3 faces"):
        compare.choose(BOXES, 3, 3, "a")


def test_kept_counts_valid_rows_at_the_threshold():
    scores = np.array([0.9, 0.7, 0.5, 0.4, 0.95], np.float32)   # row 4: padding past count
    assert compare.kept(4, scores, 0.5) == 3
    assert compare.kept(4, scores, 0.0) == 4
    assert compare.kept(0, scores, 0.0) == 0


def test_cosine_against_the_definition():
    u, v = unit(1), unit(2)
    ref = sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))
    assert compare.cosine(u, v) == pytest.approx(ref, abs=1e-12)
    assert compare.cosine(u, u) == pytest.approx(1.0)
    assert compare.cosine(u, [-x for x in u]) == pytest.approx(-1.0)
    assert compare.cosine(u, [3 * x for x in u]) == pytest.approx(1.0)
    assert compare.cosine([1, 0], [0, 1]) == 0.0
    assert compare.cosine([1, 0], [0, 0]) == 0.0
    big, tiny = [3.4e38] * D, [1e-45] * D                  # float32's extremes: no overflow
    assert compare.cosine(big, tiny) == pytest.approx(1.0)
    assert compare.cosine(big, [-x for x in big]) == pytest.approx(-1.0)


def test_the_verdict_is_at_or_above_the_threshold():
    t = compare.Threshold(0.5, "arcface", "synthetic, seed 3")
    assert compare.verdict(0.5, t)["match"] and not compare.verdict(0.4999, t)["match"]
    assert compare.verdict(0.5, t)["threshold"] == {"value": 0.5, "stated_by": "arcface",
                                                    "weights_provenance": "synthetic, seed 3",
                                                    "synthetic_weights": True}
    assert not compare.Threshold(0.5, "arcface", "insightface ArcFace (w600k_r50.onnx)").synthetic


# ---- the reference embedding ---------------------------------------------------------

def test_every_encoding_of_an_embedding_reads_back_exactly():
    v = unit(7)
    want = np.array(v, np.float64)
    for value in (b64(v), packed(v), bytearray(packed(v)), v,
                  {"dtype": "<f4", "shape": [D], "data": packed(v)}):
        np.testing.assert_array_equal(compare.embedding_from(value, D), want)


@pytest.mark.parametrize("value, why", [
    (base64.b64encode(b"\0" * 2047).decode(), "not a whole number of float32"),
    (b"\0" * 2047, "not a whole number of float32"),
    (b64([0.1] * 511), "511 float32, the model's embeddings have 512"),
    (b64([0.1] * 513), "513 float32"),
    (b64([float("nan")] + [0.1] * 511), "NaN or infinity"),
    (b64([float("inf")] + [0.1] * 511), "NaN or infinity"),
    (b64([0.0] * 512), "zero vector"),
    ("not base64!", "invalid base64"),
    ("A" * 5000, "base64 characters"),
    ([0.1] * 511, "a list of 512 numbers"),
    ([True] * 512, "a list of 512 numbers"),
    ([10 ** 400] + [0.1] * 511, "beyond float range"),
    ({"dtype": "<f8", "shape": [512], "data": b"\0" * 4096}, "typed array"),
    (12, "base64 of little-endian float32"),
    (None, "base64 of little-endian float32"),
])
def test_a_bad_embedding_is_invalid_embedding(value, why):
    with pytest.raises(InvalidEmbedding, match=why):
        compare.embedding_from(value, D)


@fuzz_settings(300)
@given(st.one_of(st.binary(max_size=4 * D + 8), st.text(max_size=3000),
                 st.binary(min_size=4 * D, max_size=4 * D).map(lambda b: base64.b64encode(b).decode()),
                 st.lists(st.one_of(st.floats(), st.integers(), st.booleans()), max_size=D + 1)))
def test_fuzzed_embeddings_read_or_are_refused_as_invalid_embedding(value):
    try:
        vec = compare.embedding_from(value, D)
    except InvalidEmbedding:
        return
    assert vec.shape == (D,) and np.isfinite(vec).all() and vec.any()
    assert compare.cosine(vec, vec) == pytest.approx(1.0)


@fuzz_settings(200)
@given(arrays(np.float32, D, elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
def test_fuzzed_finite_vectors_round_trip_through_base64(a):
    v = a.tolist()
    try:
        got = compare.embedding_from(b64(v), D)
    except InvalidEmbedding as exc:
        assert "zero vector" in str(exc) and not any(v)
        return
    np.testing.assert_array_equal(got, np.array(v, np.float64))
    assert compare.cosine(got, got) == pytest.approx(1.0) and compare.cosine(got, -got) == pytest.approx(-1.0)


# ---- the body ------------------------------------------------------------------------

@pytest.mark.parametrize("doc, why", [
    ({"b": b"x"}, 'image "a" is missing'),
    ({"a": b"x"}, 'image "b" or a reference "embedding" is missing'),
    ({"a": b"x", "b": b"y", "embedding": "e"}, "not both"),
])
def test_a_missing_input_is_missing_part_naming_it(doc, why):
    with pytest.raises(MissingPart, match=why):
        pair_of(doc)


# ---- the route on the fake Triton ----------------------------------------------------

def _files(a=JPEG, b=JPEG):
    return [("a", ("a.jpg", a, "image/jpeg")), ("b", ("b.jpg", b, "image/jpeg"))]


def _json(a=JPEG, **kw):
    return {"a": base64.b64encode(a).decode(), **kw}


def test_two_images_are_one_triton_call_of_two_in_every_body_form():
    fake = VectorFake()
    fake.detections = np.array([[0, 0, 10, 10], [100, 100, 300, 300], [0, 0, 50, 50]], np.float32)
    with app_client(fake) as client:
        answers = [client.post(PATH, files=_files()),
                   client.post(PATH, json=_json(b=base64.b64encode(JPEG).decode())),
                   client.post(PATH, content=msgpack.packb({"a": JPEG, "b": JPEG}),
                               headers={"content-type": "application/msgpack"})]
        faces = client.post("/v1/faces", content=JPEG, headers={"content-type": "image/jpeg"}).json()
    assert fake.calls == [("faces", 2)] * 3 + [("faces", 1)]
    body = answers[0].json()
    assert all(r.status_code == 200 and r.json() == body for r in answers)
    listed = faces["results"][0]["faces"]
    assert body["a"]["faces"] == len(listed) == 3 and body["a"]["face"] == 1
    assert body["a"]["box"] == listed[1]["box"] and body["a"]["score"] == listed[1]["score"]
    assert (body["a"]["width"], body["a"]["height"]) == (1280, 720)
    # VectorFake: row 1 of image 0 and of image 1 are different random unit vectors
    assert -1 <= body["similarity"] < 0.5 and body["model"] == "faces"


def test_an_image_against_its_own_embedding_is_similarity_1_in_one_call_of_one():
    fake = VectorFake()
    with app_client(fake) as client:
        listed = client.post("/v1/faces", content=JPEG, headers={"content-type": "image/jpeg"},
                             params={"embedding_format": "base64"}).json()["results"][0]["faces"]
        raw = client.post("/v1/faces", content=JPEG, headers={"content-type": "image/jpeg",
                                                              "accept": "application/msgpack"})
        typed = msgpack.unpackb(raw.content)["results"][0]["faces"][2]["embedding"]
        as_json = client.post(PATH, json=_json(embedding=listed[2]["embedding"]), params={"face_a": 2})
        as_part = client.post(PATH, files=[("a", ("a.jpg", JPEG, "image/jpeg")),
                                           ("embedding", (None, listed[2]["embedding"]))], params={"face_a": 2})
        as_typed = client.post(PATH, content=msgpack.packb({"a": JPEG, "embedding": typed}),
                               params={"face_a": 2}, headers={"content-type": "application/msgpack"})
        as_bin = client.post(PATH, content=msgpack.packb({"a": JPEG, "embedding": typed["data"]}),
                             params={"face_a": 2}, headers={"content-type": "application/x-msgpack",
                                                            "accept": "application/msgpack"})
    for r in (as_json, as_part, as_typed):
        assert r.status_code == 200, r.text
        assert r.json()["similarity"] == pytest.approx(1.0, abs=1e-6) and r.json()["match"]
        assert r.json()["b"] == {"source": "embedding"} and r.json()["a"]["face"] == 2
    assert msgpack.unpackb(as_bin.content) == as_json.json()
    assert as_bin.headers["content-type"] == "application/msgpack"
    assert fake.calls[2:] == [("faces", 1)] * 4


def test_the_answer_is_the_same_data_in_json_and_msgpack():
    with app_client(VectorFake()) as client:
        plain = client.post(PATH, files=_files())
        packed_answer = client.post(PATH, files=_files(), headers={"accept": "application/msgpack"})
        refused = client.post(PATH, files=_files(), headers={"accept": "text/html"})
    assert packed_answer.headers["content-type"] == "application/msgpack"
    assert msgpack.unpackb(packed_answer.content) == plain.json()
    assert refused.status_code == 406


def _error(r, status, code):
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]["message"]


def test_errors_have_stable_codes_and_a_bad_reference_never_reaches_triton():
    fake = VectorFake()
    with app_client(fake) as client:
        assert "'b'" in _error(client.post(PATH, files=_files(), params={"face_b": 3}), 422,
                               "face_index_out_of_range")
        calls = len(fake.calls)
        for emb in (b64([0.1] * 511), b64([0.0] * 512), base64.b64encode(b"\1\2\3").decode()):
            _error(client.post(PATH, json=_json(embedding=emb)), 422, "invalid_embedding")
        _error(client.post(PATH, json=_json(embedding=b64(unit(1))), params={"face_b": 0}), 422,
               "invalid_parameter")
        assert '"b"' in _error(client.post(PATH, files=_files()[:1]), 400, "missing_part")
        assert '"a"' in _error(client.post(PATH, json={"b": base64.b64encode(JPEG).decode()}), 400,
                               "missing_part")
        _error(client.post(PATH, content=JPEG, headers={"content-type": "image/jpeg"}), 415,
               "unsupported_media_type")
        _error(client.post(PATH, content=b"\x81\xa1a", headers={"content-type": "application/msgpack"}),
               400, "invalid_payload")
        _error(client.post(PATH, files=_files(b=b"not an image")), 415, "unsupported_media_type")
        _error(client.post(PATH, files=_files(), params={"face_a": -1}), 422, "invalid_parameter")
        _error(client.post(PATH, files=_files(), params={"model": "nope"}), 422, "invalid_parameter")
        assert len(fake.calls) == calls
        fake.detections = np.zeros((0, 4), np.float32)
        assert "'a'" in _error(client.post(PATH, files=_files()), 422, "no_face")


def test_no_face_in_b_names_b():
    class OnlyA(VectorFake):
        def _output(self, spec, n):
            out = super()._output(spec, n)
            if spec.name == "num_faces":
                out[1:] = 0
            return out

    with app_client(OnlyA()) as client:
        assert "'b'" in _error(client.post(PATH, files=_files()), 422, "no_face")


def test_the_score_threshold_decides_which_faces_count():
    with app_client(VectorFake()) as client:
        high = client.post(PATH, files=_files(), params={"score_threshold": 0.8})
        low = client.post(PATH, files=_files(), params={"score_threshold": 0.6})
    assert high.json()["a"]["faces"] == 1 and low.json()["a"]["faces"] == 3


def test_openapi_documents_the_pair_bodies_and_answers():
    with app_client(VectorFake(), docs=True) as client:
        op = client.get("/openapi.json").json()["paths"][PATH]["post"]
    assert set(op["requestBody"]["content"]) == {"multipart/form-data", "application/json",
                                                 "application/msgpack"}
    assert set(op["responses"]["200"]["content"]) == {"application/json", "application/msgpack"}
    assert {p["name"] for p in op["parameters"]} >= {"model", "face_a", "face_b", "score_threshold"}
    assert op["responses"]["422"]
