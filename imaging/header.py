"""What an image is, from its header alone: format by magic bytes, stored size, EXIF
orientation and what its decode will cost. Pixel limits are judged here, before any
decoding (decompression bombs never reach a decoder). Bounded work: PNG reads IHDR at
fixed offsets; JPEG walks its markers within imaging.jpeg's bounds."""
from __future__ import annotations

from dataclasses import dataclass

from . import jpeg, png
from .errors import CorruptImage, ImageTooLarge, UnsupportedImage

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = png.MAGIC


def sniff(data) -> str | None:
    """'jpeg', 'png' or None, from the magic bytes (a declared type is not trusted)."""
    head = bytes(data[:8])
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PNG_MAGIC):
        return "png"
    return None


@dataclass(frozen=True)
class ImageHeader:
    kind: str          # "jpeg" | "png"
    width: int         # stored (pre-orientation) size
    height: int
    orientation: int = 1   # EXIF orientation 1..8 (1 = as stored; PNG: always 1)
    # JPEG: (h, v) sampling factors per component (1 gray, 3 YCbCr, 4 CMYK/YCCK)
    sampling: tuple[tuple[int, int], ...] = ((1, 1),) * 3
    # JPEG: progressive or multi-scan, libjpeg keeps every DCT coefficient while decoding
    buffered: bool = False
    channels: int = 3      # PNG: samples per pixel (palette: 1)
    bit_depth: int = 8
    data_at: int = 0       # JPEG: its first scan (the image data) starts at or after this offset

    @property
    def transposed(self) -> bool:
        """Orientations 5-8 swap width and height."""
        return self.orientation >= 5

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, i.e. after orientation."""
        return (self.height, self.width) if self.transposed else (self.width, self.height)


def read_header(data, *, max_pixels: int, max_side: int) -> ImageHeader:
    """`data`: bytes or any buffer (a memoryview slice of a multipart body)."""
    kind = sniff(data)
    if kind is None:
        raise UnsupportedImage("not a JPEG or PNG image (unrecognised magic bytes)")
    if kind == "jpeg":
        j = jpeg.read(data)
        header = ImageHeader("jpeg", j.width, j.height, j.orientation, j.sampling, j.buffered,
                             data_at=j.data_at)
    else:
        p = png.read(data)
        header = ImageHeader("png", p.width, p.height, channels=p.channels,
                             bit_depth=p.bit_depth)
    w, h = header.width, header.height
    if w <= 0 or h <= 0:
        raise CorruptImage(f"image has an empty size {w}x{h}")
    if w * h > max_pixels or max(w, h) > max_side:
        raise ImageTooLarge(
            f"image is {w}x{h} = {w * h} pixels; limits are {max_pixels} pixels "
            f"and {max_side} per side")
    return header
