"""The gateway's error tree, in ONE place.

`ClientError`s are the caller's mistakes (4xx, stable `code`); `UpstreamError`s are
Triton or capacity problems (5xx / 429, often with Retry-After). Both bases are only
caught, never raised themselves. 404/405 (and 401/403 from an app's own dependencies)
come from Starlette's HTTPException, answered in the same body by the app's handler.
Anything else is a bug and answers 500 `internal_error`. Every error body is
`{"error": {"code": ..., "message": ...}}`.

What a body says is written for an anonymous client: a `ClientError`'s message is about
the client's own request; an `UpstreamError`'s body carries only its class's `public`
text, never the message it was raised with (Triton's own words, endpoint addresses and
states, in-flight counts): that `message` is the error's detail, for the gateway's logs,
its retries and ejections, and the admin readiness view (docs/gateway.md, Errors).
"""
from __future__ import annotations

import imaging


class GatewayError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class ClientError(GatewayError):
    """The request is wrong; retrying it unchanged will fail the same way."""
    status = 400
    code = "bad_request"


class EmptyBody(ClientError):
    status, code = 400, "empty_body"


class InvalidImage(ClientError):
    """Looks like a supported image (magic bytes) but cannot be decoded: corrupt/truncated."""
    status, code = 400, "invalid_image"


class InvalidPayload(ClientError):
    """Malformed JSON, base64 or multipart framing."""
    status, code = 400, "invalid_payload"


class UnsupportedMediaType(ClientError):
    status, code = 415, "unsupported_media_type"


class PayloadTooLarge(ClientError):
    status, code = 413, "payload_too_large"


class ImageTooLarge(ClientError):
    status, code = 413, "image_too_large"


class TooManyImages(ClientError):
    status, code = 413, "too_many_images"


class ImageTooComplex(ClientError):
    status, code = 422, "image_too_complex"


class HeaderTooLarge(ClientError):
    """The request line and headers over `max_header_bytes` (answered by the protocol)."""
    status, code = 431, "header_too_large"


class HeaderTimeout(ClientError):
    """The request line and headers did not arrive within header_timeout_s."""
    status, code = 408, "header_timeout"


class BodyTimeout(ClientError):
    """The body did not arrive within body_timeout_s of the request's head."""
    status, code = 408, "body_timeout"


class TooManyConnections(ClientError):
    """More open connections from one client address than max_connections_per_client."""
    status, code = 429, "too_many_connections"


class InvalidText(ClientError):
    status, code = 422, "invalid_text"


class InvalidParameter(ClientError):
    status, code = 422, "invalid_parameter"


class MissingPart(ClientError):
    """A face compare body without one of its inputs (`a`, `b` or `embedding`)."""
    status, code = 400, "missing_part"


class NoFace(ClientError):
    """Face compare: an image in which no face was found (the message names it)."""
    status, code = 422, "no_face"


class FaceIndexOutOfRange(ClientError):
    status, code = 422, "face_index_out_of_range"


class InvalidEmbedding(ClientError):
    """A reference embedding that is not the model's D little-endian finite float32s."""
    status, code = 422, "invalid_embedding"


class NotAcceptable(ClientError):
    """The Accept header excludes every format the gateway answers in."""
    status, code = 406, "not_acceptable"


class UpstreamError(GatewayError):
    """Triton or capacity trouble; the same request may succeed later. `message` is the
    detail (logged); the body says `public`."""
    status = 503
    code = "upstream_error"
    public = "the service cannot answer this request now; retry later"

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.public}}


class TritonUnavailable(UpstreamError):
    status, code = 503, "triton_unavailable"
    public = "no model server is reachable now; retry later"


class ModelUnavailable(UpstreamError):
    status, code = 503, "model_unavailable"
    public = "the model this route runs is not available now; retry later"


class TritonTimeout(UpstreamError):
    status, code = 504, "triton_timeout"
    public = "the model did not answer within the gateway's deadline"


class TritonOverloaded(UpstreamError):
    """Triton's dynamic batcher rejected the request (queue full / queue timeout)."""
    status, code = 429, "triton_overloaded"
    public = "the model's queue is full; retry later"


class GatewayOverloaded(UpstreamError):
    """The gateway's own in-flight limit is reached: shed instead of queueing."""
    status, code = 503, "gateway_overloaded"
    public = "the gateway is at capacity; retry later"


class TritonError(UpstreamError):
    """Triton answered with an error that is not one of the above (a server-side failure)."""
    status, code = 502, "triton_error"
    public = "the model server failed to process the request"


class ContractMismatch(RuntimeError):
    """Triton serves a model whose tensors differ from config.pbtxt: refuse to start."""


# The codec's errors as the gateway answers them: the one place they are mapped.
_IMAGING = ((imaging.UnsupportedImage, UnsupportedMediaType), (imaging.CorruptImage, InvalidImage),
            (imaging.ImageTooLarge, ImageTooLarge), (imaging.ImageTooComplex, ImageTooComplex))


def from_imaging(exc: imaging.ImagingError) -> ClientError:
    for codec_error, ours in _IMAGING:
        if isinstance(exc, codec_error):
            return ours(str(exc))
    return InvalidImage(str(exc))
