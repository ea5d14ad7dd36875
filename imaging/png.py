"""PNG headers and the chunks the decoder is allowed to see.

libpng inflates compressed ancillary chunks (zTXt, iTXt, iCCP) while it decodes, each
up to its chunk limit and at a CPU cost that has nothing to do with the pixels: a
0.8 MB PNG of 100 zTXt chunks kept a decode thread busy for ~19 s here. None of them
changes the pixels a model sees, so the decoder is given only the critical chunks
(IHDR, PLTE, IDAT, IEND) and tRNS; every other ancillary chunk (text, ICC profile,
EXIF, APNG animation, private chunks) is dropped by one walk over the chunk headers,
at most MAX_CHUNKS of them (Python work per chunk, never per byte).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .errors import CorruptImage

MAGIC = b"\x89PNG\r\n\x1a\n"
# libpng writes 8 KiB IDAT chunks: a 32 MiB PNG has ~4,000; 64 Ki leaves room for small ones.
MAX_CHUNKS = 64 * 1024
KEPT = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"})
# colour type -> (samples per pixel, allowed bit depths)
_COLOR = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)),
          4: (2, (8, 16)), 6: (4, (8, 16))}


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    channels: int
    bit_depth: int
    interlaced: bool


def read(data) -> PngInfo:
    """IHDR, the first chunk (fixed offsets: no walk)."""
    if len(data) < 33 or bytes(data[8:16]) != b"\x00\x00\x00\x0dIHDR":
        raise CorruptImage("corrupt PNG: no IHDR chunk")
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if color not in _COLOR or depth not in _COLOR[color][1] or interlace > 1:
        raise CorruptImage(f"corrupt PNG: colour type {color} with bit depth {depth}")
    return PngInfo(width, height, _COLOR[color][0], depth, interlace == 1)


def critical(data):
    """`data` with only the chunks in KEPT, up to IEND: `data` itself when it has
    nothing else, else a copy (at most len(data) bytes). Chunk lengths are checked
    against the data; an unknown critical chunk is CorruptImage (libpng refuses it)."""
    n, pos, chunks = len(data), 8, 0
    spans: list[list[int]] = []
    dropped = False
    while True:
        if pos + 12 > n:
            raise CorruptImage("corrupt or truncated PNG: it ends before IEND")
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = bytes(data[pos + 4:pos + 8])
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > n:
            raise CorruptImage("corrupt or truncated PNG: a chunk runs past the end")
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise CorruptImage(f"corrupt PNG: over {MAX_CHUNKS} chunks")
        if kind in KEPT:
            if spans and spans[-1][1] == pos:
                spans[-1][1] = end
            else:
                spans.append([pos, end])
        elif kind[0] & 0x20:      # ancillary (lower-case first letter): not for the decoder
            dropped = True
        else:
            raise CorruptImage(f"corrupt PNG: unknown critical chunk {kind!r}")
        pos = end
        if kind == b"IEND":
            break
    if not dropped and pos == n:
        return data
    view = memoryview(data)
    return b"".join([view[:8]] + [view[s:e] for s, e in spans])


def verify(chunks) -> None:
    """The CRC of every chunk of `chunks` (what `critical` returns) and at least one IDAT:
    libpng refuses a critical chunk whose CRC is wrong, so a decoder that sees the whole
    batch (DALI) is never handed one. One walk over the chunk headers; the CRCs run at
    C speed."""
    n, pos, idat = len(chunks), 8, False
    while pos + 12 <= n:
        length = struct.unpack(">I", chunks[pos:pos + 4])[0]
        kind = bytes(chunks[pos + 4:pos + 8])
        end = pos + 8 + length
        if struct.unpack(">I", chunks[end:end + 4])[0] != zlib.crc32(chunks[pos + 4:end]):
            raise CorruptImage(f"corrupt PNG: chunk {kind.decode('latin-1')} at byte {pos} fails its CRC")
        idat = idat or kind == b"IDAT"
        pos = end + 4
    if not idat:
        raise CorruptImage("corrupt PNG: no image data (IDAT)")
