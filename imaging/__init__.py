"""The image codec shared by the gateway and Triton's CPU decode step: JPEG/PNG bytes
-> letterboxed uint8 RGB frames, and model coordinates -> original pixels.

Pure (numpy, cv2, simplejpeg only). Every entry point either returns or raises an
`ImagingError` (imaging.errors) with a message for the client; the work each does is
bounded before it starts:

* `read_header` (bounded header walk, pixel limits) -> `ImageHeader`;
* `plan_letterbox` -> `Letterbox`; `decode_cost(header, box, len(data))`: the bytes the
  decode will hold, to charge before running it;
* `decode_into` (decode + letterbox into a frame slot) or `decode` (RGB, oriented);
* `to_original`: model-frame points back to original pixels, for a whole batch;
* `admit` (imaging.handoff): every check short of decoding, for a batch decoder elsewhere
  (the GPU profile's DALI step) -> the header and the bytes to hand it.

A per-item caller (a Triton python-backend step) calls `letterbox(data, w, h, ...)`
(read_header -> plan_letterbox -> decode_into) for each item and turns an ImagingError
into that item's error (InvalidArgument), leaving the others.
"""
from .cost import decode_cost, jpeg_scaled_size
from .decode import MAX_SCANS, decode, decode_into, letterbox
from .errors import (CorruptImage, ImageTooComplex, ImageTooLarge, ImagingError,
                     UnsupportedImage)
from .handoff import admit
from .geometry import Letterbox, plan_letterbox, to_original
from .header import JPEG_MAGIC, PNG_MAGIC, ImageHeader, read_header, sniff

__all__ = [
    "CorruptImage", "ImageHeader", "admit", "ImageTooComplex", "ImageTooLarge", "ImagingError",
    "JPEG_MAGIC", "Letterbox", "MAX_SCANS", "PNG_MAGIC", "UnsupportedImage", "decode",
    "decode_cost", "decode_into", "jpeg_scaled_size", "letterbox", "plan_letterbox", "read_header",
    "sniff", "to_original",
]
