"""Every error the gateway emits, and its one rendering: the OpenAI envelope.

    GatewayError(status, type, code, message, param)
    ├── InvalidRequest            400 invalid_request_error
    │   └── CapabilityMissing     400 invalid_request_error / unsupported_*
    ├── Unauthorized              401 authentication_error
    ├── ModelNotFound             404 not_found_error / model_not_found
    ├── PayloadTooLarge           413 invalid_request_error / request_too_large
    ├── UnsupportedMediaType      415 invalid_request_error / unsupported_media_type
    ├── Overloaded                429 rate_limit_error (+ Retry-After)
    ├── UpstreamHTTPError         status chosen by the adapter's map_error
    ├── UpstreamUnavailable       502/503 server_error (connect refused, no ready deployment)
    ├── UpstreamTimeout           504 server_error
    └── UpstreamProtocolError     502 server_error (answer we cannot understand)

Handlers raise; the API layer renders. Clients read `error.message`: never send a bare string.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    # Retry elsewhere before the first byte reached the client? (used by the dispatcher)
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        self.param = param
        self.headers = headers or {}
        # What this failure says about the backend, for the health picture (e.g. "loading").
        self.backend_state: str | None = None
        # One process behind the backend failed but others can serve (a FastChat worker):
        # a retry may go to the same backend, which stays in service.
        self.retry_same_backend = False
        # Text a backend wrote (set by status_error). For a 5xx it may hold tracebacks, DSNs or
        # internal hosts: the proxy logs it and sends the client a generic message instead.
        self.upstream_text: str | None = None
        self.upstream_status = 0

    def envelope(self) -> dict[str, dict[str, object]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())

    def sse_event(self) -> bytes:
        """The error as one SSE event, for failures after the stream's headers went out."""
        return b"data: " + self.body() + b"\n\n"


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class CapabilityMissing(InvalidRequest):
    code = "unsupported_parameter"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    status = 404
    type = "not_found_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class Overloaded(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True
    reason = "backend"  # who refused, for llm_gateway_rejections_total: the limiter sets its own


def limiter_refused(message: str, reason: str, retry_after: str) -> Overloaded:
    err = Overloaded(message, headers={"Retry-After": retry_after})
    err.reason = reason
    return err


class UpstreamHTTPError(GatewayError):
    """An upstream answered non-2xx; the adapter chose status/type/code."""


class UpstreamUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "upstream_unavailable"
    retryable = True


class UpstreamTimeout(GatewayError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"
    retryable = True


class UpstreamProtocolError(GatewayError):
    status = 502
    type = "server_error"
    code = "upstream_protocol_error"


# Status -> (type, code) for upstream answers that carry no usable error type of their own.
_STATUS_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "upstream_auth_failed"),
    403: ("permission_error", None),
    404: ("not_found_error", None),
    408: ("server_error", "upstream_timeout"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def status_error(status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None) -> UpstreamHTTPError:
    """Build the gateway's error for an upstream non-2xx answer.

    Upstream 4xx stay 4xx (the client's request was at fault, an auth failure upstream is the
    gateway's misconfiguration and becomes 502); 5xx other than 503/504 become 502 Bad Gateway.
    Retry elsewhere is allowed for 429/502/503/504 only: a 4xx will fail on every replica.
    A 4xx keeps the backend's message (the client's business); a 5xx's is replaced by the proxy.
    """
    if status == 401 or status == 403:
        # The client authenticated to *us*; an upstream refusal is our configuration's fault.
        out_status = 502
    elif 400 <= status < 500:
        out_status = status
    elif status in (503, 504):
        out_status = status
    else:
        out_status = 502
    default_type, default_code = _STATUS_TYPES.get(status, ("server_error", None))
    err = UpstreamHTTPError(
        message,
        status=out_status,
        type=type or default_type,
        code=code or default_code,
        param=param,
        retryable=status in (429, 502, 503, 504),
    )
    # Every adapter's upstream-derived error passes here: mark its text as the backend's, so the
    # one place that renders errors (gateway/api/proxy.py) can keep a 5xx's text from the client.
    err.upstream_text = message
    err.upstream_status = status
    return err
