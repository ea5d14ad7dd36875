"""What the codec refuses, strips or bounds before a decoder runs (issue 20): the JPEG
marker walk's prefix and segment bounds, EXIF's entry bound, progressive/multi-scan
detection and the scan cap, unsupported JPEG variants, and PNG's chunk walk (only the
critical chunks reach libpng)."""
from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
from PIL import Image

import imaging
from imaging import CorruptImage, ImageTooComplex, UnsupportedImage, jpeg, png
from tests.unit import crafted_images as crafted

LIMITS = dict(max_pixels=50_000_000, max_side=20_000)


def header(data) -> imaging.ImageHeader:
    return imaging.read_header(data, **LIMITS)


def test_fill_bytes_past_the_prefix_are_refused_without_walking_them():
    small = crafted.jpeg(crafted.gradient(48, 64))
    bomb = crafted.jpeg_fill_bomb(30_000_000, small)
    with pytest.raises(CorruptImage, match=f"first {jpeg.PREFIX_BYTES} bytes"):
        header(bomb)
    # fill bytes within the prefix are legal: skipped in one match, the image reads
    ok = crafted.jpeg_fill_bomb(jpeg.PREFIX_BYTES // 2, small)
    assert (header(ok).width, header(ok).height) == (64, 48)
    assert imaging.decode(ok, header(ok)).shape == (48, 64, 3)


def test_header_segments_are_bounded():
    many = crafted.jpeg_segments(*[(0xFE, b"c")] * (jpeg.MAX_SEGMENTS + 1),
                                 (0xC0, crafted.sof(64, 48)), (0xDA, crafted.sos(3)))
    with pytest.raises(CorruptImage, match="segments"):
        header(many)
    few = crafted.jpeg_segments(*[(0xFE, b"c")] * 100, (0xC0, crafted.sof(64, 48)),
                                (0xDA, crafted.sos(3)))
    assert header(few).width == 64


def test_a_scan_without_every_component_is_a_buffered_decode():
    seq = crafted.jpeg_segments((0xC0, crafted.sof(64, 48)), (0xDA, crafted.sos(3)))
    multi = crafted.jpeg_segments((0xC0, crafted.sof(64, 48)), (0xDA, crafted.sos(1)))
    prog = crafted.jpeg_segments((0xC2, crafted.sof(64, 48)), (0xDA, crafted.sos(3)))
    assert [header(d).buffered for d in (seq, multi, prog)] == [False, True, True]
    img = crafted.gradient(120, 160)
    assert not header(crafted.jpeg(img)).buffered
    assert header(crafted.jpeg(img, progressive=True)).buffered
    gray = header(crafted.jpeg(img[..., 0], progressive=True))
    assert gray.buffered and gray.sampling == ((1, 1),)


@pytest.mark.parametrize("segment,why", [
    ((0xC3, crafted.sof(64, 48)), "lossless"),
    ((0xC5, crafted.sof(64, 48)), "hierarchical"),
    ((0xC1, crafted.sof(64, 48, precision=12)), "12-bit"),
])
def test_jpeg_variants_libjpeg_turbo_does_not_decode_are_unsupported(segment, why):
    with pytest.raises(UnsupportedImage, match=why):
        header(crafted.jpeg_segments(segment, (0xDA, crafted.sos(3))))


@pytest.mark.parametrize("data", [
    b"\xff\xd8\xff",                                                     # magic only
    crafted.jpeg_segments((0xDA, crafted.sos(3))),                        # scan before frame
    crafted.jpeg_segments((0xC0, b"\x08\x00")),                           # short frame header
    crafted.jpeg_segments((0xC0, crafted.sof(64, 48, sampling=((5, 1),) * 3))),
    b"\xff\xd8\xff\xd9",                                                  # EOI at once
    b"\xff\xd8\xff\xe0\x00\x01",                                          # length < 2
    b"\xff\xd8\xff\xe0\x00\x04ab\x00\x00\x00\x00",                        # not a marker
])
def test_malformed_jpeg_headers_are_corrupt(data):
    with pytest.raises(CorruptImage):
        header(data)


def test_exif_walk_reads_at_most_max_ifd_entries():
    def tiff(entries: int, at: int) -> bytes:
        ifd = [struct.pack("<HHII", 0x0100, 3, 1, 0)] * entries
        ifd[at] = struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
        return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", entries) + b"".join(ifd)

    assert jpeg.exif_orientation(tiff(600, 10)) == 6
    assert jpeg.exif_orientation(tiff(600, jpeg.MAX_IFD_ENTRIES + 5)) == 1   # past the bound
    assert jpeg.exif_orientation(b"II*\x00" + struct.pack("<I", 10**9)) == 1  # offset outside


def test_a_progressive_jpeg_with_too_many_scans_is_refused_before_decoding():
    img = crafted.gradient(120, 160)
    extra = b"\xff\xda" * (imaging.MAX_SCANS + 1)   # trailing data: libjpeg stops at EOI
    prog = crafted.jpeg(img, progressive=True) + extra
    with pytest.raises(ImageTooComplex, match="scans"):
        imaging.decode(prog, header(prog))
    frame = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ImageTooComplex):
        imaging.decode_into(prog, header(prog), imaging.plan_letterbox(160, 120, 64, 64), frame)
    base = crafted.jpeg(img) + extra                # sequential: one pass, no cap needed
    assert imaging.decode(base, header(base)).shape == (120, 160, 3)


def test_png_ancillary_chunks_never_reach_the_decoder():
    bomb = crafted.png_text_bomb(n=3, inflated=1_000_000)
    kept = png.critical(bomb)
    plain = crafted.png(crafted.gradient(64, 64))
    assert kept == plain          # PIL writes IHDR, IDAT, IEND: exactly what is kept
    assert png.critical(plain) is plain
    assert (imaging.decode(bomb, header(bomb)) == crafted.gradient(64, 64)).all()
    # tRNS and PLTE are kept, text/ICC/EXIF/APNG chunks go
    p = Image.fromarray(crafted.gradient(32, 32)).convert("P")
    buf = io.BytesIO()
    p.save(buf, "PNG", transparency=0)
    data = crafted.insert_chunks(buf.getvalue(), [crafted.chunk(b"iCCP", b"p\x00\x00xx"),
                                                  crafted.chunk(b"acTL", b"\x00" * 8)])
    kinds = _chunk_kinds(png.critical(data))
    assert b"PLTE" in kinds and b"tRNS" in kinds and b"iCCP" not in kinds and b"acTL" not in kinds


def _chunk_kinds(data: bytes) -> list[bytes]:
    pos, out = 8, []
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        out.append(data[pos + 4:pos + 8])
        pos += 12 + n
    return out


@pytest.mark.parametrize("mutate,why", [
    (lambda d: d[:-6], "ends before IEND"),
    (lambda d: d[:33] + struct.pack(">I", 2**31) + b"tEXt" + d[41:], "past the end"),
    (lambda d: crafted.insert_chunks(d, [crafted.chunk(b"ABCD", b"")]), "unknown critical"),
    (lambda d: crafted.insert_chunks(d, [crafted.chunk(b"tEXt", b"")] * (png.MAX_CHUNKS + 1)),
     "chunks"),
])
def test_png_chunk_walk_refuses_malformed_layouts(mutate, why):
    data = mutate(crafted.png(crafted.gradient(16, 16)))
    with pytest.raises(CorruptImage, match=why):
        imaging.decode(data, header(data))


@pytest.mark.parametrize("kind", ["rgb16", "rgba16", "gray16", "gray_alpha", "interlaced",
                                  "palette_trns", "bits1"])
def test_png_kinds_decode_like_a_reference(kind):
    img = crafted.gradient(90, 120)
    if kind in ("rgb16", "rgba16", "gray16"):
        wide = img.astype(np.uint16) * 257
        src = {"rgb16": wide[..., ::-1], "rgba16": np.dstack([wide[..., ::-1], wide[..., :1]]),
               "gray16": wide[..., 0]}[kind]
        data = cv2.imencode(".png", np.ascontiguousarray(src))[1].tobytes()
        ref = img if kind != "gray16" else np.repeat(img[..., :1], 3, axis=2)
    else:
        im = {"gray_alpha": Image.fromarray(img[..., 0]).convert("LA"),
              "interlaced": Image.fromarray(img), "palette_trns": Image.fromarray(img).convert("P"),
              "bits1": Image.fromarray(img[..., 0] > 128)}[kind]
        buf = io.BytesIO()
        im.save(buf, "PNG", **({"transparency": 3} if kind == "palette_trns" else {}))
        data = buf.getvalue()
        if kind == "interlaced":   # PIL does not write Adam7
            data = crafted.png_adam7(img)
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    h = header(data)
    out = imaging.decode(data, h)
    assert out.shape == (90, 120, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1, kind
