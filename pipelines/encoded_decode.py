"""The decode step of the encoded entry points (Triton python backend): one JPEG/PNG per
batch item -> the letterboxed frame, the original size and the scale, with the gateway's
codec (imaging.letterbox: header, pixel and side limits before any decode, EXIF, DCT-scaled
libjpeg-turbo) and the gateway's limits (this model's config parameters, written by
serving/encoded.py from contract/defaults.py).

Its tensors are those of the GPU profile's DALI step (pipelines/dali_letterbox.py), so an
entry point's ensemble is the same on both: `image` STRING [1] -> `images` uint8 [H, W, 3],
`size` INT32 [2] (original width, height after EXIF orientation), `scale` FP64 [2] (model
px per original px).

With the output `encoded` instead of `images` (the GPU profile) it decodes nothing: each
item goes through imaging.admit (header, limits, and every structural check the CPU codec
makes: truncation, CRCs, scan count; PNGs stripped to their critical chunks) and passes on
as uint8 rows (zero-padded to the longest item of the request) to the DALI decoder, which
judges no limit itself and fails its WHOLE batch on one bad file: a bad file is refused
here, in its own request, before it can reach that batch.

Per batch: every item of every request decoded straight into its slot of ONE frame array
by a small thread pool (the decoders release the GIL). An item that is not an image it
will decode fails ITS request with InvalidArgument naming the problem; the other requests
of the batch are answered.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

import imaging
from contract import from_json

LIMITS = ("max_image_pixels", "max_image_side", "pad_value", "decode_threads")


class TritonPythonModel:
    def initialize(self, args):
        c = from_json(json.loads(args["model_config"]))
        self.name = c.name
        try:
            self.max_pixels, self.max_side, self.pad, threads = (int(c.parameter(k)) for k in LIMITS)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from exc
        outputs = {o.name: o for o in c.outputs}
        self.check_only = "encoded" in outputs
        if not self.check_only:
            self.frame_h, self.frame_w, _ = outputs["images"].dims
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="decode")

    def execute(self, requests):
        items = [pb_utils.get_input_tensor_by_name(r, "image").as_numpy().reshape(-1) for r in requests]
        counts = [len(i) for i in items]
        flat = [bytes(d) if not isinstance(d, bytes) else d for i in items for d in i]
        if self.check_only:
            errors, outputs = self._check(flat)
        else:
            errors, outputs = self._decode(flat)
        responses, start = [], 0
        for n in counts:
            bad = [(k, errors[start + k]) for k in range(n) if errors[start + k] is not None]
            if bad:
                k, err = bad[0]
                where = f"item {k}: " if n > 1 else ""
                msg = f"{self.name}: {where}{err}"
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(msg, pb_utils.TritonError.INVALID_ARG)))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, part) for name, part in outputs(start, start + n)]))
            start += n
        return responses

    def _decode(self, flat: list[bytes]):
        n = len(flat)
        frames = np.empty((n, self.frame_h, self.frame_w, 3), np.uint8)
        size = np.zeros((n, 2), np.int32)
        scale = np.ones((n, 2), np.float64)

        def one(i: int):
            try:
                _, box = imaging.letterbox(flat[i], self.frame_w, self.frame_h, max_pixels=self.max_pixels,
                                           max_side=self.max_side, pad_value=self.pad, out=frames[i])
            except imaging.ImagingError as exc:
                return str(exc)
            size[i] = box.width, box.height
            scale[i] = box.scale
            return None

        errors = list(self.pool.map(one, range(n)))
        return errors, lambda a, b: (("images", frames[a:b]), ("size", size[a:b]), ("scale", scale[a:b]))

    def _check(self, flat: list[bytes]):
        handed = list(flat)

        def one(i: int):
            try:
                _, handed[i] = imaging.admit(flat[i], max_pixels=self.max_pixels, max_side=self.max_side)
            except imaging.ImagingError as exc:
                return str(exc)
            return None

        errors = [one(i) for i in range(len(flat))]     # bounded walks and C-speed scans: no decoding

        def rows(a: int, b: int):
            # Triton tensors are rectangular: a request's files are zero-padded to its longest
            # (the DALI backend's documented way to send encoded images; decoders stop at the
            # JPEG end-of-image marker / the PNG IEND chunk that `admit` made sure of)
            width = max((len(d) for d in handed[a:b]), default=0)
            out = np.zeros((b - a, width), np.uint8)
            for j, d in enumerate(handed[a:b]):
                out[j, :len(d)] = np.frombuffer(d, np.uint8)
            return (("encoded", out),)
        return errors, rows

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
