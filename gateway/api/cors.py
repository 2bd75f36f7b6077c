"""CORS for browser clients (a web chat UI calling /v1/* directly), only when `cors.allow_origins` is set.

A preflight (OPTIONS with Access-Control-Request-Method) from an allowed origin is answered here, 204 and
no key needed, as browsers send it without credentials. Other requests from an allowed origin get the
allow-origin header added to their answer (their `send` is wrapped, so they leave the zero-copy write
path; requests without an Origin header, i.e. every non-browser client, are not touched). Admin endpoints
are never opened to other origins (gateway/auth/admin.py refuses cross-site requests).
"""

from __future__ import annotations

from gateway.api.asgi import Scope, Send, header
from gateway.settings import CorsSettings

PATHS = ("/v1/", "/chat/completions", "/completions", "/embeddings", "/responses", "/models")
METHODS = b"GET, POST, OPTIONS"
ALLOW_HEADERS = b"authorization, content-type, x-api-key, x-session-id, openai-organization, openai-project"
EXPOSE = (b"x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, "
          b"x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, "
          b"x-ratelimit-reset-tokens")


class Cors:
    def __init__(self, cfg: CorsSettings) -> None:
        self.any = "*" in cfg.allow_origins
        self.origins = {o.encode().lower() for o in cfg.allow_origins}
        self.max_age = str(cfg.max_age).encode()

    def applies(self, scope: Scope) -> bytes | None:
        """The request's Origin when this layer must answer for it, else None."""
        origin = header(scope, b"origin")
        if origin is None or not scope["path"].startswith(PATHS):
            return None
        return origin if self.any or origin.lower() in self.origins else None

    async def preflight(self, origin: bytes, scope: Scope, send: Send) -> None:
        asked = header(scope, b"access-control-request-headers")
        headers = [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                   (b"access-control-allow-methods", METHODS),
                   (b"access-control-allow-headers", asked if asked else ALLOW_HEADERS),
                   (b"access-control-max-age", self.max_age), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def wrap(self, origin: bytes, send: Send) -> Send:
        extra = [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                 (b"access-control-expose-headers", EXPOSE)]

        async def send_with_cors(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return send_with_cors
