"""The gateway's error tree, in ONE place.

`ClientError`s are the caller's mistakes (4xx, stable `code`); `UpstreamError`s are
Triton or capacity problems (5xx / 429, often with Retry-After). Both bases are only
caught, never raised themselves. 404/405 (and 401/403 from an app's own dependencies)
come from Starlette's HTTPException, answered in the same body by the app's handler.
Anything else is a bug and answers 500 `internal_error`. Every error body is
`{"error": {"code": ..., "message": ...}}`.
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


class UpstreamError(GatewayError):
    """Triton or capacity trouble; the same request may succeed later."""
    status = 503
    code = "upstream_error"


class TritonUnavailable(UpstreamError):
    status, code = 503, "triton_unavailable"


class ModelUnavailable(UpstreamError):
    status, code = 503, "model_unavailable"


class TritonTimeout(UpstreamError):
    status, code = 504, "triton_timeout"


class TritonOverloaded(UpstreamError):
    """Triton's dynamic batcher rejected the request (queue full / queue timeout)."""
    status, code = 429, "triton_overloaded"


class GatewayOverloaded(UpstreamError):
    """The gateway's own in-flight limit is reached: shed instead of queueing."""
    status, code = 503, "gateway_overloaded"


class TritonError(UpstreamError):
    """Triton answered with an error that is not one of the above (a server-side failure)."""
    status, code = 502, "triton_error"


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
