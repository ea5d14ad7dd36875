"""The answer formats through the real gateway process and the real embedded Triton: the
same request answered as JSON floats, JSON base64 and msgpack carries the same data (the
msgpack read back with the reference `msgpack` library, base64 with the stdlib)."""
from __future__ import annotations

import base64

import msgpack
import numpy as np
import pytest

from contract.routes import route_table
from tests.support.images import jpeg

pytestmark = pytest.mark.integration


def _decoded(node, key=None):
    """The answer with its vectors decoded to float lists (typed arrays and base64 strings)."""
    if isinstance(node, dict):
        if set(node) == {"dtype", "shape", "data"}:
            assert node["dtype"] == "<f4"
            return np.frombuffer(node["data"], "<f4").reshape(node["shape"]).tolist()
        return {k: _decoded(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_decoded(v, key) for v in node]
    if key == "embedding" and isinstance(node, str):
        return np.frombuffer(base64.b64decode(node, validate=True), "<f4").tolist()
    return node


@pytest.mark.parametrize("route", ["faces", "embed/image"])
def test_the_three_formats_carry_the_same_data(served, served_gateway, astronaut, route):
    r = route_table().route(route)
    served.need(r.default.model)
    body = jpeg(np.concatenate([astronaut, astronaut[:, ::-1]], axis=1))   # two faces
    c = served_gateway.client

    def post(**kw):
        res = c.post(r.path, content=body, headers={"content-type": "image/jpeg", **kw.pop("headers", {})},
                     params=kw)
        assert res.status_code == 200, res.text
        return res

    floats = post()
    b64 = post(embedding_format="base64")
    packed = post(headers={"accept": "application/msgpack"})
    assert packed.headers["content-type"] == "application/msgpack"
    reference = floats.json()
    results = reference["results"][0]
    vectors = [f["embedding"] for f in results["faces"]] if route == "faces" else [results["embedding"]]
    assert vectors and all(len(v) == 512 for v in vectors), reference
    assert _decoded(b64.json()) == reference
    assert _decoded(msgpack.unpackb(packed.content)) == reference
    assert len(packed.content) < 0.3 * len(floats.content)


def test_an_unacceptable_accept_is_406_json(served_gateway):
    res = served_gateway.client.post("/v1/embed/image", content=b"\xff\xd8",
                                     headers={"content-type": "image/jpeg", "accept": "text/csv"})
    assert res.status_code == 406 and res.json()["error"]["code"] == "not_acceptable"
