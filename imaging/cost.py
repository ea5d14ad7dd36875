"""What decoding one image holds at its peak, from its header alone: the ONE formula
a caller charges to its memory budget before the decoder runs (and refuses by).

Measured on libjpeg-turbo (simplejpeg) and OpenCV's libpng, peak RSS over the decode
(tests/unit/test_imaging_cost.py holds every term to a measurement, taken with transparent
huge pages off: where THP is on, a large allocation may fault up to 2 MiB more, which the
budget's slack covers):

* JPEG: its DCT-scaled output (3 bytes per pixel; none when libjpeg-turbo writes
  straight into the frame), a CMYK/YCCK intermediate (4), an EXIF-rotated copy (3),
  and for progressive and multi-scan JPEGs the whole image's DCT coefficients (2 bytes
  per sample of every component, padded to whole MCUs, whatever the output scale:
  libjpeg keeps them until the last scan).
* PNG: OpenCV decodes every kind (16-bit, palette, alpha, grey, interlaced) to 8-bit
  BGR and the Python binding copies it once: 6 bytes per pixel; plus the copy of the
  encoded bytes without their ancillary chunks (imaging.png.critical).
* Either: the decoders' row buffers (a few rows of the full width) and fixed state,
  and when the decoded image is shrunk by INTER_AREA (imaging.decode: 2x or more),
  OpenCV's buffers (at most the drawn size in 32-bit floats).
"""
from __future__ import annotations

from .geometry import Letterbox
from .header import ImageHeader

ROW_BYTES = 64        # per pixel of width and component: libjpeg's iMCU rows, libpng's rows
FIXED_BYTES = 256 * 1024


def jpeg_scaled_size(width: int, height: int, min_w: int, min_h: int) -> tuple[int, int]:
    """The size libjpeg-turbo decodes a (width x height) JPEG at for imaging.decode:
    the smallest M/8 scale, M = 1..4 (at least a 2x reduction), keeping both sides at
    least (min_w, min_h); full size when no such scale exists or both minima are 0."""
    if min_w <= 0 and min_h <= 0:
        return width, height
    for m in (1, 2, 3, 4):
        w, h = -(-width * m // 8), -(-height * m // 8)
        if w >= min_w and h >= min_h:
            return w, h
    return width, height


def stored_target(header: ImageHeader, box: Letterbox) -> tuple[int, int]:
    """The drawn size in stored (pre-orientation) axes."""
    return (box.new_h, box.new_w) if header.transposed else (box.new_w, box.new_h)


def writes_in_place(header: ImageHeader, box: Letterbox) -> bool:
    """An upright JPEG whose scaled size is exactly the drawn size and whose rows fill
    whole frame rows is decoded by libjpeg-turbo straight into the frame."""
    return (header.kind == "jpeg" and header.orientation == 1 and box.new_w == box.frame_w
            and jpeg_scaled_size(header.width, header.height, box.new_w, box.new_h)
            == (box.new_w, box.new_h))


def coefficient_bytes(header: ImageHeader) -> int:
    """libjpeg's whole-image coefficient buffers: per component, its blocks (rounded up
    to whole MCUs) x 64 coefficients x 2 bytes."""
    hmax = max(h for h, _ in header.sampling)
    vmax = max(v for _, v in header.sampling)
    total = 0
    for h, v in header.sampling:
        bw = -(-header.width * h // (hmax * 8))
        bh = -(-header.height * v // (vmax * 8))
        total += (-(-bw // h) * h) * (-(-bh // v) * v) * 128
    return total


def decode_cost(header: ImageHeader, box: Letterbox, encoded_bytes: int = 0) -> int:
    """Bytes one decode into `box` holds at its peak (beyond the frame it writes)."""
    def area(decoded_w: int) -> int:
        return 12 * box.new_w * box.new_h if decoded_w >= 2 * box.new_w else 0

    if header.kind == "png":
        px = header.width * header.height
        rows = ROW_BYTES * header.width * header.channels * max(1, header.bit_depth // 8)
        return 6 * px + encoded_bytes + rows + area(header.width) + FIXED_BYTES
    sw, sh = jpeg_scaled_size(header.width, header.height, *stored_target(header, box))
    out = sw * sh
    comps = len(header.sampling)
    if writes_in_place(header, box):
        cost = 0
    else:
        cost = 3 * out + area(sh if header.transposed else sw)
    if header.orientation != 1:
        cost += 3 * out
    if comps == 4:
        cost += 4 * out
    if header.buffered:
        cost += coefficient_bytes(header)
    return cost + ROW_BYTES * header.width * comps + FIXED_BYTES
