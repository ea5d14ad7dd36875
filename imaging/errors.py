"""The codec's own errors: the bytes are not an image it will decode.

Every one is a client mistake with a message written for the client (no paths, no
library internals). Callers map them in one place each: the gateway to its HTTP errors
(gateway/errors.py), a Triton decode step to InvalidArgument for the one bad item.
"""
from __future__ import annotations


class ImagingError(ValueError):
    """Base: only caught, never raised itself."""


class UnsupportedImage(ImagingError):
    """Not a JPEG or PNG (magic bytes), or a variant this codec does not decode
    (12-bit, lossless or hierarchical JPEG)."""


class CorruptImage(ImagingError):
    """Looks like a supported image but its structure is broken or truncated."""


class ImageTooLarge(ImagingError):
    """Over the pixel or side limits, judged from the header before any decoding."""


class ImageTooComplex(ImagingError):
    """Within the pixel limits, but costlier to decode than allowed (e.g. a progressive
    JPEG with more scans than any encoder writes)."""
