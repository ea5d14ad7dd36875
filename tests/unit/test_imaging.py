"""The image codec (imaging/): sniffing, headers, EXIF orientation, DCT scaling, colour
conversions, letterbox placement and the exact inverse mapping of coordinates."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageOps

import imaging as codec
from imaging import CorruptImage, ImageTooLarge, UnsupportedImage

LIMITS = dict(max_pixels=50_000_000, max_side=20_000)


def jpeg(img: np.ndarray | Image.Image, quality=95, **kw) -> bytes:
    im = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def png(img: np.ndarray, mode=None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(img)
    (im.convert(mode) if mode else im).save(buf, "PNG")
    return buf.getvalue()


def with_orientation(img: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(img, exif=exif.tobytes())


def header(data: bytes) -> codec.ImageHeader:
    return codec.read_header(data, **LIMITS)


def test_sniff_by_magic_not_by_name(astronaut):
    assert codec.sniff(jpeg(astronaut)) == "jpeg"
    assert codec.sniff(png(astronaut)) == "png"
    assert codec.sniff(b"GIF89a....") is None
    with pytest.raises(UnsupportedImage):
        header(b"just some text, not an image")


def test_header_size_without_decoding(astronaut):
    rect = np.ascontiguousarray(astronaut[:300, :512])
    h = header(jpeg(rect))
    assert (h.kind, h.width, h.height, h.orientation) == ("jpeg", 512, 300, 1)
    h = header(png(rect))
    assert (h.kind, h.width, h.height) == ("png", 512, 300)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(astronaut, orientation):
    img = np.ascontiguousarray(astronaut[:200, :320])   # not square: transposes show
    data = with_orientation(img, orientation)
    h = header(data)
    assert h.orientation == orientation
    ours = codec.decode(data, h)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert ours.shape == ref.shape
    assert (h.size[0], h.size[1]) == (ref.shape[1], ref.shape[0])
    # both decoders are libjpeg(-turbo); allow rounding differences of the IDCT/upsampling
    assert np.abs(ours.astype(int) - ref.astype(int)).mean() < 2.0


def test_malformed_exif_is_orientation_1(astronaut):
    data = jpeg(astronaut)
    bad = data[:2] + b"\xff\xe1" + struct.pack(">H", 10) + b"Exif\x00\x00MM" + data[2:]
    assert header(bad).orientation == 1
    assert codec.decode(bad, header(bad)).shape == (512, 512, 3)


def test_dct_downscale_only_when_2x_and_never_below_target(astronaut):
    big = np.ascontiguousarray(np.tile(astronaut, (2, 3, 1))[:720, :1280])
    data = jpeg(big)
    h = header(data)
    assert codec.decode(data, h, 640, 360).shape == (360, 640, 3)     # factor 2 in DCT
    # libjpeg-turbo scales by M/8: 3/8 (480 wide) is the smallest that keeps >= 330
    assert codec.decode(data, h, 330, 100).shape == (270, 480, 3)
    assert codec.decode(data, h, 900, 500).shape == (720, 1280, 3)    # < 2x: full decode
    assert codec.decode(data, h, 160, 90).shape == (90, 160, 3)       # factor 8


def test_grayscale_and_cmyk_jpeg_become_rgb(astronaut):
    gray = jpeg(Image.fromarray(astronaut).convert("L"))
    out = codec.decode(gray, header(gray))
    assert out.shape == (512, 512, 3) and (out[..., 0] == out[..., 2]).all()
    cmyk = jpeg(Image.fromarray(astronaut).convert("CMYK"))
    out = codec.decode(cmyk, header(cmyk))
    ref = np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))
    assert out.shape == (512, 512, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 3.0


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_png_modes(astronaut, mode):
    data = png(astronaut, mode)
    out = codec.decode(data, header(data))
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert out.shape == (512, 512, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_truncated_and_corrupt_are_invalid_image(astronaut):
    data = jpeg(astronaut)
    with pytest.raises(CorruptImage):
        h = header(data[: len(data) // 2])
        codec.decode(data[: len(data) // 2], h)
    with pytest.raises(CorruptImage):
        header(data[:40])
    p = png(astronaut)
    with pytest.raises(CorruptImage):
        codec.decode(p[:200], header(p[:200]))
    with pytest.raises(CorruptImage):
        header(codec.PNG_MAGIC + b"\x00" * 8)


def test_pixel_bomb_rejected_from_header_alone():
    # A PNG that claims 100000 x 100000 pixels and carries no pixel data at all.
    ihdr = struct.pack(">II", 100_000, 100_000) + b"\x08\x02\x00\x00\x00"
    bomb = codec.PNG_MAGIC + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00" * 4
    with pytest.raises(ImageTooLarge, match="100000x100000"):
        header(bomb)


@pytest.mark.parametrize("w,h,fw,fh", [(1280, 720, 640, 640), (512, 512, 640, 640),
                                       (300, 1000, 640, 640), (4000, 3000, 512, 512),
                                       (1000, 333, 256, 256)])
def test_letterbox_inverse_mapping_exact_to_a_pixel(w, h, fw, fh):
    """Draw a rectangle at known original pixels, letterbox it, find it in the frame,
    map its corners back: they land within one original pixel... of scale."""
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = int(w * 0.3), int(h * 0.4), int(w * 0.7), int(h * 0.9)
    img[y1:y2, x1:x2] = 255
    data = png(img)
    hd = header(data)
    box = codec.plan_letterbox(*hd.size, fw, fh)
    frame = np.full((fh, fw, 3), 7, np.uint8)
    codec.decode_into(data, hd, box, frame, pad_value=0)
    assert max(box.new_w, box.new_h) in (fw, fh) and box.new_w <= fw and box.new_h <= fh
    assert (frame[box.new_h:] == 0).all() and (frame[:, box.new_w:] == 0).all()
    ys, xs = np.nonzero(frame[..., 0] > 127)
    found = np.array([[[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]], np.float32)
    back = codec.to_original(found, np.array([box.scale]), np.array([[w, h]], float))[0, 0]
    # one frame pixel is 1/scale original pixels: the mapping is exact to that
    tol = 1.0 / min(box.scale) + 1.0
    assert np.abs(back - [x1, y1, x2, y2]).max() <= tol, (back, (x1, y1, x2, y2), tol)


def test_inverse_mapping_is_the_exact_inverse_and_clips():
    scale = np.array([[0.5, 0.5], [2.0, 1.0]])
    size = np.array([[1280, 720], [100, 200]], float)
    pts = np.array([[[10, 20, 630, 350]], [[10, 20, 300, 300]]], np.float32)
    out = codec.to_original(pts, scale, size)
    assert out.tolist() == [[[20, 40, 1260, 700]], [[5, 20, 100, 200]]]
    lm = np.array([[[[1, 2], [3, 4]]], [[[2, 2], [4, 4]]]], np.float32)   # [B, K, P, 2]
    assert codec.to_original(lm, scale, size).tolist() == [[[[2, 4], [6, 8]]],
                                                          [[[1, 2], [2, 4]]]]


def test_per_item_letterbox_gives_a_frame_or_the_codecs_error(astronaut):
    """What a Triton decode step calls per batch item: a frame and its letterbox, or an
    ImagingError for that item alone."""
    items = [jpeg(astronaut), b"not an image", png(astronaut)[:100],
             with_orientation(astronaut[:200], 6)]
    results = []
    for data in items:
        try:
            frame, box = codec.letterbox(data, 64, 64, **LIMITS)
            results.append((frame.shape, box.new_w, box.new_h))
        except codec.ImagingError as exc:
            results.append(type(exc).__name__)
    assert results == [((64, 64, 3), 64, 64), "UnsupportedImage", "CorruptImage",
                       ((64, 64, 3), 25, 64)]
