"""Images handed to a decoder that judges nothing itself and decodes a whole batch at
once (the GPU profile's DALI step): every check the CPU codec makes before or while it
decodes, made here without decoding, so one client's bad file is refused on its own
instead of failing everyone's batch.

`admit` = `read_header` (format, pixel and side limits) plus:
* JPEG: libjpeg's own reading of the header agrees with ours, a progressive JPEG has at
  most MAX_SCANS scans (as `decode` refuses), and an end-of-image marker follows the
  image data (a truncated file has none; entropy-coded data never holds 0xFF 0xD9: every
  0xFF in it is stuffed with 0x00, so the search cannot be fooled by the data);
* PNG: only the chunks the decoder may see (imaging.png.critical: no text or ICC bombs),
  every chunk's CRC right, IEND present, at least one IDAT.
Bounded work: header walks, one C-speed search (JPEG) or CRC pass (PNG) over the bytes.

Not caught without decoding: a JPEG whose entropy-coded data is damaged but framed
correctly; libjpeg decodes such data with a warning, what a GPU decoder does with it is
its own (docs/serving.md says what only a GPU host confirms).
"""
from __future__ import annotations

from . import png
from .decode import check_jpeg
from .errors import CorruptImage
from .header import ImageHeader, read_header

EOI = b"\xff\xd9"


def admit(data: bytes, *, max_pixels: int, max_side: int) -> tuple[ImageHeader, bytes]:
    """(header, the bytes to hand the decoder) or an ImagingError naming the problem."""
    header = read_header(data, max_pixels=max_pixels, max_side=max_side)
    if header.kind == "jpeg":
        check_jpeg(data, header)
        if bytes(data).rfind(EOI, header.data_at) < 0:
            raise CorruptImage("corrupt or truncated JPEG: no end-of-image marker after its image data")
        return header, data
    chunks = png.critical(data)
    png.verify(chunks)
    return header, bytes(chunks)


__all__ = ["admit"]
