"""JPEG headers read by a bounded marker walk: no decoding, no work that grows with
the body.

The walk looks at most at the first `PREFIX_BYTES` of the data and at most
`MAX_SEGMENTS` marker segments (runs of 0xFF fill bytes are skipped by one regex match,
at C speed). That is all it ever costs: a 30 MB body of fill bytes costs one match over
the prefix. It returns what the decoders' cost depends on: the frame size, components
and their sampling factors, the sample precision, whether libjpeg must buffer the whole
image's DCT coefficients (progressive, or a sequential image whose first scan does not
hold every component), and the EXIF orientation.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .errors import CorruptImage, UnsupportedImage

# A JPEG's headers (APPn metadata, tables, frame header) precede its first scan: EXIF
# and XMP segments are at most 64 KiB each; 4 MiB leaves room for extended XMP and
# ICC profiles split over many APP segments.
PREFIX_BYTES = 4 * 1024 * 1024
MAX_SEGMENTS = 1024
MAX_IFD_ENTRIES = 512
_FILL = re.compile(rb"\xff+")
_SOS = re.compile(rb"\xff\xda")
# SOFn markers: 0xC0-0xCF except DHT (C4), JPG (C8), DAC (CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE = frozenset({0xC2, 0xCA})
# baseline, extended and progressive, Huffman or arithmetic coded
_DECODED = frozenset({0xC0, 0xC1, 0xC2, 0xC9, 0xCA})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})   # TEM, RSTn: no length field


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]   # (h, v) sampling factors per component
    buffered: bool                          # the whole image's coefficients are kept
    orientation: int                        # EXIF 1..8
    data_at: int = 0                        # no entropy-coded data before this offset


def read(data) -> JpegInfo:
    """The header of a JPEG (`data` starts with its magic bytes): CorruptImage when the
    frame header is not found within the bounds, UnsupportedImage for variants
    libjpeg-turbo's 8-bit API does not decode."""
    end = min(len(data), PREFIX_BYTES)
    pos, segments = 2, 0
    frame: tuple | None = None
    orientation = 0
    while True:
        if pos + 4 > end:
            if frame is None:
                raise CorruptImage("corrupt or truncated JPEG: no frame header within the "
                                   f"first {PREFIX_BYTES} bytes")
            # the first scan header is past the bounds: assume the costlier decode
            return _info(frame, None, orientation, pos)
        if data[pos] != 0xFF:
            raise CorruptImage(f"corrupt JPEG: expected a marker at byte {pos}")
        pos = _FILL.match(data, pos, end).end() - 1     # the last 0xFF of a fill run
        if pos + 4 > end:
            continue
        marker = data[pos + 1]
        if marker in _STANDALONE or marker == 0xD8:
            pos += 2
            continue
        if marker == 0xD9:
            raise CorruptImage("corrupt JPEG: it ends before any image data")
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2:
            raise CorruptImage(f"corrupt JPEG: a segment of length {length} at byte {pos}")
        body = pos + 4
        if marker in _SOF:
            frame = _frame(marker, data[body:pos + 2 + length])
        elif marker == 0xE1 and not orientation and data[body:body + 6] == b"Exif\x00\x00":
            orientation = exif_orientation(bytes(data[body + 6:pos + 2 + length]))
        elif marker == 0xDA:
            if frame is None:
                raise CorruptImage("corrupt JPEG: a scan before the frame header")
            return _info(frame, data[body] if body < len(data) else None, orientation, pos)
        pos += 2 + length
        segments += 1
        if segments > MAX_SEGMENTS:
            raise CorruptImage(f"corrupt JPEG: over {MAX_SEGMENTS} header segments "
                               "before the image data")


def _frame(marker: int, seg) -> tuple:
    if len(seg) < 6:
        raise CorruptImage("corrupt JPEG: truncated frame header")
    precision, height, width, n = struct.unpack(">BHHB", seg[:6])
    if marker not in _DECODED:
        kind = "lossless" if marker in (0xC3, 0xC7, 0xCB, 0xCF) else "hierarchical"
        raise UnsupportedImage(f"{kind} JPEG is not supported; send a baseline or "
                               "progressive JPEG, or a PNG")
    if precision != 8:
        raise UnsupportedImage(f"{precision}-bit JPEG is not supported; send an 8-bit JPEG "
                               "or a PNG")
    if n not in (1, 3, 4) or len(seg) < 6 + 3 * n:
        raise CorruptImage(f"corrupt JPEG: a frame header with {n} components")
    sampling = tuple((seg[7 + 3 * i] >> 4, seg[7 + 3 * i] & 15) for i in range(n))
    if not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in sampling):
        raise CorruptImage("corrupt JPEG: invalid sampling factors")
    return width, height, sampling, marker in _PROGRESSIVE


def _info(frame, scan_components: int | None, orientation: int, data_at: int) -> JpegInfo:
    width, height, sampling, progressive = frame
    # a sequential scan without every component: libjpeg buffers the whole image
    multi_scan = scan_components is None or scan_components < len(sampling)
    return JpegInfo(width, height, sampling, progressive or multi_scan, orientation or 1, data_at)


def exif_orientation(tiff: bytes) -> int:
    """EXIF orientation (tag 0x0112) from the TIFF structure of an APP1 segment: IFD0's
    first MAX_IFD_ENTRIES entries. Malformed EXIF is orientation 1: it is metadata, not
    pixels."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
    count = min(count, MAX_IFD_ENTRIES, (len(tiff) - ifd - 2) // 12)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, typ = struct.unpack(order + "HH", tiff[entry:entry + 4])
        if tag == 0x0112 and typ == 3:   # SHORT
            value = struct.unpack(order + "H", tiff[entry + 8:entry + 10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def count_scans(data, most: int) -> int:
    """Start-of-scan markers in the data, counting stops past `most` (a C-speed search:
    entropy-coded data never holds 0xFF 0xDA, it stuffs a 0x00 after every 0xFF)."""
    n = 0
    for _ in _SOS.finditer(data):
        n += 1
        if n > most:
            break
    return n
