"""Every failure a client can see, as one exception hierarchy rendered in OpenAI's error format.

The hot path raises a `GatewayError`; `error_body()` turns it into the bytes OpenAI's
SDKs parse (`{"error": {"message", "type", "param", "code"}}`). No stack trace ever
reaches a client.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.model = model

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)

    def headers(self) -> list[tuple[bytes, bytes]]:
        ra = self.retry_after
        if ra is None or not ra >= 0:  # nan too
            return []
        return [(b"retry-after", b"%d" % max(1, round(min(ra, 86400.0))))]  # at most a day


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    code = "unsupported_media_type"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    """A valid gateway key that may not do this (a model outside its `models`)."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class UpstreamError(GatewayError):
    """The upstream answered with an error or broke the connection (502)."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class Unavailable(UpstreamError):
    """No endpoint can take the request now: circuits open or queues full (503)."""

    status = 503
    type = "service_unavailable"
    code = "no_capacity"


class RateLimited(UpstreamError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class UpstreamClientError(GatewayError):
    """The upstream rejected the request itself (a 4xx that is the client's to fix).

    Its status and body go back to the client unchanged.
    """

    def __init__(self, status: int, body: bytes, model: str) -> None:
        super().__init__(f"{model} rejected the request with HTTP {status}", model=model)
        self.status = status
        self.raw_body = body
        self.type = "invalid_request_error"

    def body(self) -> bytes:
        try:
            parsed = orjson.loads(self.raw_body)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                return self.raw_body
        except orjson.JSONDecodeError:
            pass
        text = self.raw_body[:500].decode("utf-8", "replace")
        return error_body(f"{self.message}: {text}", self.type, None, None)


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )
