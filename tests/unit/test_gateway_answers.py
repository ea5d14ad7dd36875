"""Answer formats: Accept negotiation, the vector encoders, and every route answering the
same data as JSON floats, JSON base64 and msgpack (gateway/negotiation.py, responses.py).

Encodings are read back with independent decoders: the stdlib's base64 and struct, and the
reference `msgpack` library (the gateway writes with ormsgpack)."""
from __future__ import annotations

import base64
import struct

import msgpack
import numpy as np
import pytest

from contract.routes import route_table
from gateway.negotiation import JSON, MSGPACK, negotiate
from gateway.responses import base64_vectors, float_vectors, typed_vectors
from tests.support.fakes import JPEG, VectorFake, app_client, multipart
from tests.support.images import noise_jpeg

# ---- negotiation -------------------------------------------------------------------------


@pytest.mark.parametrize("accept,expected", [
    (None, JSON), ("", JSON), ("*/*", JSON), ("application/*", JSON), ("application/json", JSON),
    ("application/msgpack", MSGPACK), ("Application/MsgPack", MSGPACK),
    ("application/x-msgpack", "application/x-msgpack"),
    ("application/vnd.msgpack", "application/vnd.msgpack"),
    # equal quality: the server's preference (JSON), whatever the order in the header
    ("application/msgpack, application/json", JSON),
    ("application/json;q=0.5, application/msgpack", MSGPACK),
    (" application/json ; q=0.5 ,application/msgpack;q=0.6", MSGPACK),
    # the most specific range sets a type's quality
    ("application/json;q=0, */*", MSGPACK),
    ("application/msgpack;q=0, */*", JSON),
    ("*/*;q=0.1, application/msgpack;q=0.2", MSGPACK),
    ("application/*;q=0.9, application/json;q=0.1", MSGPACK),
    # a browser's list: */* admits JSON
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", JSON),
    ("application/json; charset=utf-8", JSON),
    # malformed ranges are skipped; none well-formed at all reads as "anything"
    ("application/msgpack;q=abc, application/json;q=0.1", JSON),
    ("application/msgpack;q=2, application/json;q=0.1", JSON),
    ("garbage", JSON), ("*/json", JSON), (",,;", JSON),
])
def test_negotiation_picks_by_quality_then_the_servers_preference(accept, expected):
    assert negotiate(accept) == expected


@pytest.mark.parametrize("accept", ["text/html", "image/png, text/*", "application/json;q=0",
                                    "application/json;q=0, application/msgpack;q=0.000",
                                    "*/*;q=0", "application/xml"])
def test_negotiation_finds_nothing_acceptable(accept):
    assert negotiate(accept) is None


# ---- the vector encoders -------------------------------------------------------------------

ROWS = np.random.default_rng(3).standard_normal((7, 512)).astype(np.float32)


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 512])
def test_base64_vectors_are_the_stdlib_base64_of_little_endian_float32(width):
    rows = ROWS[:, :width]
    encoded = base64_vectors(rows)
    for row, text in zip(rows, encoded):
        raw = struct.pack(f"<{width}f", *row.tolist())
        assert text == base64.b64encode(raw).decode()
        back = struct.unpack(f"<{width}f", base64.b64decode(text, validate=True))
        assert list(back) == row.tolist()          # exact: the JSON floats' values


def test_typed_vectors_are_little_endian_float32_with_their_shape():
    leaves = typed_vectors(ROWS)
    assert len(leaves) == len(ROWS)
    for row, leaf in zip(ROWS, leaves):
        assert leaf["dtype"] == "<f4" and leaf["shape"] == [512]
        assert leaf["data"] == struct.pack("<512f", *row.tolist())


def test_typed_vectors_keep_inner_shapes_and_convert_byte_order_and_width():
    rows = ROWS[:6, :10].reshape(6, 5, 2)
    leaf = typed_vectors(rows.astype(">f4"))[2]            # big-endian in: little-endian out
    assert leaf["dtype"] == "<f4" and leaf["shape"] == [5, 2]
    assert leaf["data"] == struct.pack("<10f", *rows[2].ravel().tolist())
    half = typed_vectors(rows.astype(np.float16))[0]     # float16 widened, exactly
    assert half["data"] == struct.pack("<10f", *rows[0].astype(np.float16).ravel().tolist())
    ints = typed_vectors(np.arange(12, dtype=">i8").reshape(3, 4))[1]
    assert ints == {"dtype": "<i4", "shape": [4], "data": struct.pack("<4i", 4, 5, 6, 7)}
    with pytest.raises(TypeError):
        typed_vectors(np.array([["a"]], dtype=object))


def test_encoders_of_no_rows_and_of_empty_rows():
    for encode in (float_vectors, base64_vectors, typed_vectors):
        assert encode(np.zeros((0, 512), np.float32)) == []
    assert base64_vectors(np.zeros((2, 0), np.float32)) == ["", ""]
    assert typed_vectors(np.zeros((2, 0), np.float32))[1] == {"dtype": "<f4", "shape": [0], "data": b""}


# ---- through the app: the same data in every format ----------------------------------------

def to_floats(node, key=None):
    """An answer with every encoded vector decoded back to float lists (stdlib base64 and
    the typed array's own dtype and shape), to compare with the JSON-floats answer."""
    if isinstance(node, dict):
        if set(node) == {"dtype", "shape", "data"}:
            return np.frombuffer(node["data"], np.dtype(node["dtype"])).reshape(node["shape"]).tolist()
        return {k: to_floats(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [to_floats(v, key) for v in node]
    if key == "embedding" and isinstance(node, str):
        return np.frombuffer(base64.b64decode(node, validate=True), "<f4").tolist()
    return node


def embeddings_in(node) -> list:
    """Every `embedding` value of an answer."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "embedding" and v is not None] + \
            [e for k, v in node.items() if k != "embedding" for e in embeddings_in(v)]
    if isinstance(node, list):
        return [e for v in node for e in embeddings_in(v)]
    return []


def _request(client, path, accept=None, n=1, **params):
    headers = {"accept": accept} if accept else {}
    if path == "/v1/embed/text":
        return client.post(path, json={"texts": [f"caption {i}" for i in range(n)]},
                           params=params, headers=headers)
    if n == 1:
        return client.post(path, content=JPEG, params=params,
                           headers={**headers, "content-type": "image/jpeg"})
    return client.post(path, files=multipart(n, noise_jpeg(320, 240)), params=params, headers=headers)


PATHS = [r.path for r in route_table().routes]


@pytest.mark.parametrize("n", [1, 16])       # 16 images: rendered in the pool (over 1 MiB of outputs)
@pytest.mark.parametrize("path", PATHS)
def test_every_route_answers_the_same_data_in_every_format(path, n):
    with app_client(VectorFake()) as client:
        plain = _request(client, path, n=n)
        assert plain.status_code == 200, plain.text
        assert plain.headers["content-type"] == "application/json"
        assert plain.headers["vary"] == "Accept"
        reference = plain.json()
        b64 = _request(client, path, n=n, embedding_format="base64")
        packed = _request(client, path, "application/msgpack", n=n)
        packed_b64 = _request(client, path, "application/msgpack", n=n, embedding_format="base64")
    assert b64.headers["content-type"] == "application/json"
    assert packed.headers["content-type"] == "application/msgpack" and packed.headers["vary"] == "Accept"
    decoded = msgpack.unpackb(packed.content)
    assert packed_b64.content == packed.content        # msgpack vectors are binary whatever it says
    vectors = embeddings_in(reference)
    if path in ("/v1/faces", "/v1/embed/image", "/v1/embed/text", "/v1/analyze"):
        assert len(vectors) >= n and all(len(v) == 512 for v in vectors)
        assert all(isinstance(v, str) for v in embeddings_in(b64.json()))
        assert all(v["dtype"] == "<f4" and v["shape"] == [512] and len(v["data"]) == 2048
                   for v in embeddings_in(decoded))
        assert len(packed.content) < 0.3 * len(plain.content)
    else:
        assert not vectors and b64.content == plain.content
    assert to_floats(b64.json()) == reference
    assert to_floats(decoded) == reference


def test_models_answers_msgpack_too():
    with app_client(VectorFake()) as client:
        plain = client.get("/v1/models")
        packed = client.get("/v1/models", headers={"accept": "application/vnd.msgpack"})
    assert packed.headers["content-type"] == "application/vnd.msgpack"
    assert msgpack.unpackb(packed.content) == plain.json()


def test_not_acceptable_is_406_in_json_before_the_body_is_read_or_triton_called():
    fake = VectorFake()
    with app_client(fake) as client:
        for path in PATHS:
            r = _request(client, path, "text/html, application/json;q=0")
            assert r.status_code == 406, (path, r.text)
            assert r.headers["content-type"] == "application/json"
            assert r.json()["error"]["code"] == "not_acceptable"
            assert "application/msgpack" in r.json()["error"]["message"]
        assert client.get("/v1/models", headers={"accept": "text/plain"}).status_code == 406
    assert fake.calls == []


def test_errors_are_json_whatever_the_client_accepts():
    with app_client(VectorFake()) as client:
        bad = client.post("/v1/faces", content=b"not an image", headers={
            "accept": "application/msgpack", "content-type": "image/jpeg"})
        wrong = _request(client, "/v1/faces", "application/msgpack", embedding_format="hex")
    assert bad.status_code == 415 and bad.headers["content-type"] == "application/json"
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_parameter"


def test_probes_answer_whatever_the_accept_header_says():
    with app_client(VectorFake()) as client:
        odd = client.get("/healthz", headers={"accept": "image/png"})
        packed = client.get("/readyz", headers={"accept": "application/msgpack"})
    assert odd.status_code == 200 and odd.json() == {"status": "ok"}
    assert packed.headers["content-type"] == "application/msgpack"
    assert msgpack.unpackb(packed.content)["ready"] is True


def test_openapi_documents_the_formats_and_the_query():
    with app_client(VectorFake(), docs=True) as client:
        spec = client.get("/openapi.json").json()
    for path in PATHS:
        op = spec["paths"][path]["post"]
        assert set(op["responses"]["200"]["content"]) == {"application/json", "application/msgpack"}, path
        assert "406" in op["responses"], path
        params = {p["name"]: p for p in op.get("parameters", ())}
        has_vectors = path in ("/v1/faces", "/v1/embed/image", "/v1/embed/text", "/v1/analyze")
        assert ("embedding_format" in params) == has_vectors, path
        if has_vectors:
            assert params["embedding_format"]["schema"]["enum"] == ["float", "base64"]

