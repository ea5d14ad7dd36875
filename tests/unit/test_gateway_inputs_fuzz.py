"""Property-based fuzzing of the gateway's body parsers (hypothesis): multipart bodies
(random, structured with random boundaries, names, headers and data, and mutated) and
JSON bodies (random, structured, base64 mutated) give images or the gateway's
ClientError (tests/unit/fuzz_targets.py). Bounded and derandomized in `make test`,
long in `make fuzz`."""
from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.fuzz_targets import TALLY, check_json, check_multipart, check_texts
from tests.unit.fuzzing import fuzz_settings


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\n" + TALLY.report())


TOKEN = st.text(st.sampled_from("abcAB09-_'()+,./:=? \"\\;\r\n\x00é"), max_size=90)


@st.composite
def multipart_body(draw) -> tuple[bytes, str]:
    boundary = draw(st.one_of(st.text("abcXYZ019-'()+_,./:=?", min_size=1, max_size=80),
                              TOKEN, st.just("b" * draw(st.integers(60, 400)))))
    out = b""
    for _ in range(draw(st.integers(0, 24))):
        out += b"--" + boundary.encode("utf-8", "replace")
        out += draw(st.sampled_from([b"\r\n", b"\n", b" \r\n", b""]))
        for _ in range(draw(st.integers(0, 4))):
            out += draw(st.sampled_from([b"Content-Disposition", b"Content-Type", b"X", b""]))
            out += b": " + draw(TOKEN).encode("utf-8", "replace") + b"\r\n"
        if draw(st.booleans()):
            name = draw(TOKEN).replace('"', "")
            file = draw(st.one_of(st.none(), TOKEN.map(lambda s: s.replace('"', ""))))
            out += f'Content-Disposition: form-data; name="{name}"'.encode("utf-8", "replace")
            if file is not None:
                out += f'; filename="{file}"'.encode("utf-8", "replace")
            out += b"\r\n"
        out += b"\r\n" + draw(st.binary(max_size=300)) + b"\r\n"
    if draw(st.booleans()):
        out += b"--" + boundary.encode("utf-8", "replace") + b"--\r\n"
    out += draw(st.binary(max_size=40))
    quoted = draw(st.booleans())
    ctype = "multipart/form-data; boundary=" + (f'"{boundary}"' if quoted else boundary)
    if draw(st.integers(0, 9)) == 0:
        ctype = draw(st.sampled_from(["multipart/form-data", "multipart/form-data; boundary=",
                                      "multipart/form-data; charset=x"])) + draw(TOKEN)
    return out, ctype


@fuzz_settings(200)
@given(multipart_body())
def test_fuzz_multipart_structured(body_ctype):
    check_multipart(*body_ctype)


@st.composite
def wellformed_then_mutated(draw) -> tuple[bytes, str]:
    """A well-formed body (files and fields) with a few bytes changed, cut or repeated."""
    from tests.unit.crafted_images import multipart

    parts = draw(st.lists(st.tuples(st.sampled_from(["images", "x", ""]),
                                    st.one_of(st.none(), st.sampled_from(["a.jpg", "", "é"])),
                                    st.binary(max_size=200)), max_size=24))
    body = bytearray(multipart(parts, draw(st.text("abc0-_", min_size=1, max_size=70)))[0])
    ctype = "multipart/form-data; boundary=" + body[2:body.index(b"\r\n")].decode()
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, max(0, len(body) - 1)))
        op = draw(st.sampled_from(["flip", "cut", "repeat"]))
        if op == "flip" and body:
            body[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del body[at:]
        else:
            body[at:at] = bytes(body[at:at + 40]) * draw(st.integers(1, 30))
    return bytes(body), ctype


@fuzz_settings(200)
@given(wellformed_then_mutated())
def test_fuzz_multipart_wellformed_mutated(body_ctype):
    check_multipart(*body_ctype)


@fuzz_settings(200)
@given(st.binary(max_size=3000), TOKEN)
def test_fuzz_multipart_random_bytes(body, boundary):
    check_multipart(body, f"multipart/form-data; boundary={boundary}")


SCALAR = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
          | st.floats(allow_nan=False) | st.text(max_size=40))
JSON = st.recursive(SCALAR,
                    lambda kids: st.lists(kids, max_size=6)
                    | st.dictionaries(st.sampled_from(["image", "images", "text", "texts", "x"]),
                                      kids, max_size=4), max_leaves=30)
B64 = st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())


@st.composite
def json_body(draw) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return orjson.dumps(draw(JSON))
    if kind == 1:
        items = draw(st.lists(B64 | st.text(max_size=20), max_size=8))
        one = {"image": items[0] if items else ""}
        return orjson.dumps({"images": items} if draw(st.booleans()) else one)
    if kind == 2:   # valid base64 with a byte changed, padding cut or whitespace added
        s = draw(B64)
        at = draw(st.integers(0, max(0, len(s) - 1)))
        s = s[:at] + draw(st.sampled_from(["", "=", "!", " ", "\n", "é", "A"])) + s[at + 1:]
        return orjson.dumps({"image": s})
    return draw(st.binary(max_size=500))


@fuzz_settings(200)
@given(json_body())
def test_fuzz_json_images(body):
    check_json(body)


@fuzz_settings(200)
@given(st.one_of(JSON.map(orjson.dumps), st.binary(max_size=300)))
def test_fuzz_json_texts(body):
    check_texts(body)
