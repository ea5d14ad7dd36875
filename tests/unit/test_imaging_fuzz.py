"""Property-based fuzzing of the codec (hypothesis): random, mutated and structurally
crafted JPEG/PNG bytes through header, cost and decode (tests/unit/fuzz_targets.py
says what each input must satisfy). `make test` runs a bounded, derandomized pass;
`make fuzz` sets VISIONSERVE_FUZZ_EXAMPLES for a long randomized one."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit import crafted_images as crafted
from tests.unit.fuzz_targets import TALLY, check_codec
from tests.unit.fuzzing import fuzz_settings


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\n" + TALLY.report())


def _seeds() -> list[bytes]:
    from PIL import Image

    img = crafted.gradient(40, 56)
    img[::3, ::2] ^= 0x5A
    exif = Image.Exif()
    exif[0x0112] = 6
    return [crafted.jpeg(img), crafted.jpeg(img, progressive=True),
            crafted.jpeg(img, exif=exif.tobytes()), crafted.jpeg(img[..., 0]),
            crafted.jpeg(img, subsampling=0, progressive=True),
            crafted.png(img), crafted.png(img[..., 0]), crafted.png_adam7(img),
            crafted.png(np.dstack([img, img[..., :1]])),
            crafted.insert_chunks(crafted.png(img), [crafted.chunk(b"zTXt", b"k\x00\x00"
                                                     + zlib.compress(bytes(10_000)))])]


SEEDS = _seeds()


@st.composite
def mutated(draw) -> bytes:
    """A real image with a few byte-level mutations: truncations, flips, inserted or
    repeated spans, and 16/32-bit fields set to extreme values (lengths, sizes)."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "repeat", "u16", "u32"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "truncate":
            del data[at:]
        elif op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(max_size=64))
        elif op == "repeat":
            span = bytes(data[at:at + draw(st.integers(1, 64))])
            data[at:at] = span * draw(st.integers(1, 50))
        elif op == "u16":
            data[at:at + 2] = struct.pack(">H", draw(st.sampled_from([0, 1, 2, 0xFFFF, 0x8000])))
        elif op == "u32":
            data[at:at + 4] = struct.pack(">I", draw(st.sampled_from(
                [0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 2000, 4096])))
    return bytes(data)


MARKERS = [0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC9, 0xCA, 0xCC, 0xDB, 0xDD, 0xDA, 0xE0, 0xE1,
           0xE2, 0xEE, 0xFE, 0xD9, 0xD0, 0x01]


@st.composite
def jpeg_structure(draw) -> bytes:
    """SOI and marker segments with random fields: frame headers of random sizes,
    sampling and precision, scans, EXIF blocks, fill bytes between them."""
    out = b"\xff\xd8"
    for _ in range(draw(st.integers(0, 12))):
        marker = draw(st.sampled_from(MARKERS))
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA):
            n = draw(st.sampled_from([1, 3, 4, 2, 0]))
            samp = tuple((draw(st.integers(0, 5)), draw(st.integers(0, 5))) for _ in range(n))
            payload = crafted.sof(draw(st.integers(0, 65535)), draw(st.integers(0, 65535)),
                                  samp, draw(st.sampled_from([8, 12, 16])))
        elif marker == 0xDA:
            payload = crafted.sos(draw(st.integers(0, 4)))
        elif marker == 0xE1:
            payload = b"Exif\x00\x00" + draw(st.sampled_from([b"II*\x00", b"MM\x00*"])) \
                + draw(st.binary(max_size=80))
        else:
            payload = draw(st.binary(max_size=40))
        out += b"\xff" * draw(st.integers(0, 3))
        out += bytes([0xFF, marker]) + struct.pack(">H", min(0xFFFF, len(payload) + 2)) + payload
    return out + draw(st.binary(max_size=200))


@st.composite
def png_structure(draw) -> bytes:
    """PNG chunks with random IHDR fields, compressed random IDAT, ancillary chunks
    (some compressed), unknown and truncated chunks."""
    w, h = draw(st.integers(0, 3000)), draw(st.integers(0, 3000))
    ihdr = struct.pack(">IIBBBBB", w, h, draw(st.sampled_from([1, 2, 4, 8, 16, 3])),
                       draw(st.sampled_from([0, 2, 3, 4, 6, 5])), 0, 0, draw(st.integers(0, 2)))
    out = crafted.PNG_MAGIC + crafted.chunk(b"IHDR", ihdr)
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from([b"IDAT", b"PLTE", b"tRNS", b"zTXt", b"iCCP", b"tEXt",
                                     b"acTL", b"ABCD", b"IEND"]))
        data = draw(st.binary(max_size=120))
        if kind in (b"IDAT", b"zTXt", b"iCCP"):
            data = zlib.compress(data)
        out += crafted.chunk(kind, data)
    return out + crafted.chunk(b"IEND", b"") + draw(st.binary(max_size=20))


MAGICS = st.sampled_from([b"", b"\xff\xd8\xff", crafted.PNG_MAGIC])


@fuzz_settings(200)
@given(MAGICS, st.binary(max_size=2000))
def test_fuzz_codec_random_bytes(magic, tail):
    check_codec(magic + tail)


@fuzz_settings(200)
@given(mutated())
def test_fuzz_codec_mutated_images(data):
    check_codec(data)


@fuzz_settings(200)
@given(jpeg_structure())
def test_fuzz_codec_crafted_jpeg_structure(data):
    check_codec(data)


@fuzz_settings(200)
@given(png_structure())
def test_fuzz_codec_crafted_png_structure(data):
    check_codec(data)
