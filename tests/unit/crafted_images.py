"""Hostile inputs shared by the codec's unit tests, its fuzz tests and the gateway's
integration tests: each is built here from first principles (chunk and marker
layouts of the PNG and JPEG specifications), never taken from the code under test."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png(img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG", **kw)
    return buf.getvalue()


def jpeg(img: np.ndarray, quality: int = 90, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def gradient(h: int, w: int) -> np.ndarray:
    """A smooth RGB image: compresses well, decodes at full cost."""
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)),
                      ((x + y) % 256)]).astype(np.uint8)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def insert_chunks(data: bytes, chunks: list[bytes]) -> bytes:
    """`chunks` right after IHDR (8 + 25 bytes)."""
    return data[:33] + b"".join(chunks) + data[33:]


def png_text_bomb(n: int = 100, inflated: int = 7_900_000, kind: bytes = b"zTXt") -> bytes:
    """A 64x64 PNG carrying `n` compressed text chunks of `inflated` zero bytes each
    (~0.77 MB for the defaults): libpng inflates every one while decoding."""
    z = zlib.compress(bytes(inflated), 9)
    prefix = {b"zTXt": b"\x00\x00", b"iTXt": b"\x00\x01\x00\x00\x00", b"iCCP": b"\x00\x00"}[kind]
    return insert_chunks(png(gradient(64, 64)),
                         [chunk(kind, b"k%d" % i + prefix + z) for i in range(n)])


def jpeg_fill_bomb(total: int, tail: bytes) -> bytes:
    """SOI, then fill bytes (0xFF, legal before any marker) up to `total` bytes, then
    the rest of the JPEG `tail` after its own SOI: a marker walk in Python loops once
    per fill byte."""
    body = tail[2:]
    return b"\xff\xd8" + b"\xff" * (total - 2 - len(body)) + body


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "craftedboundary",
              file_type: str = "application/octet-stream") -> tuple[bytes, str]:
    """A multipart/form-data body of (name, filename or None for a field, data) parts."""
    out = bytearray()
    for name, filename, data in parts:
        out += f"--{boundary}\r\n".encode()
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"Content-Disposition: {disp}\r\n".encode()
        if filename:
            out += f"Content-Type: {file_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def many_small_parts(total: int, boundary: str = "b") -> tuple[bytes, str]:
    """A multipart body of tiny plain fields, `total` bytes in all."""
    one = f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'.encode()
    end = f"--{boundary}--\r\n".encode()
    return one * ((total - len(end)) // len(one)) + end, f"multipart/form-data; boundary={boundary}"


def jpeg_segments(*segments: tuple[int, bytes]) -> bytes:
    """SOI + marker segments (marker, payload) with their length fields."""
    out = b"\xff\xd8"
    for marker, payload in segments:
        out += bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return out


def sof(width: int, height: int, sampling=((2, 2), (1, 1), (1, 1)), precision: int = 8) -> bytes:
    comps = b"".join(bytes([i + 1, (h << 4) | v, 0]) for i, (h, v) in enumerate(sampling))
    return struct.pack(">BHHB", precision, height, width, len(sampling)) + comps


def sos(components: int) -> bytes:
    comps = b"".join(bytes([i + 1, 0]) for i in range(components))
    return bytes([components]) + comps + b"\x00\x3f\x00"


def png_adam7(img: np.ndarray) -> bytes:
    """An interlaced RGB PNG written by hand (PIL does not write Adam7): filter 0 on
    every row of the seven passes."""
    h, w, _ = img.shape
    raw = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4),
                           (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = img[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return (PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))
