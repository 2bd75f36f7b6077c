"""`media_urls: data_only`: refuse media links a backend would fetch itself.

vLLM, llama.cpp, TGI and other OpenAI-compatible servers download `image_url` (and audio/video)
links from inside their own network: a client could make them reach internal services (SSRF from
the GPU network). With `data_only`, chat messages may carry media only inline as `data:` URLs;
any other link is a 400 naming the field. Only called when configured, so it costs nothing else.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import InvalidRequest

# Content-part keys that hold media, in OpenAI's shape ({"url": ...}) or as a bare string (vLLM's
# `{"image_url": "https://..."}`, Responses-style `input_image`), plus OpenAI's `file` part.
MEDIA_KEYS = frozenset({"image_url", "audio_url", "video_url", "input_audio", "input_image", "input_video",
                        "input_file", "file", "image", "audio", "video"})
# A URL scheme (`http:`, `file:`, `s3:`...); base64 payloads have no colon, so they never match.
SCHEME_RE = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*:")


def refuse_media_links(body: dict[str, Any]) -> None:
    """Raise InvalidRequest for the first media link in the body's chat messages."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                continue
            for key, value in part.items():
                if key in MEDIA_KEYS:
                    _check(value, f"messages[{i}].content[{j}].{key}")


def _check(value: Any, where: str) -> None:
    items = value.items() if isinstance(value, dict) else [("", value)]
    for sub, v in items:
        if isinstance(v, str) and SCHEME_RE.match(v) and not v.lstrip()[:5].lower() == "data:":
            raise InvalidRequest(f"Media links are not accepted for this model: send {where} inline as a "
                                 "base64 data: URL.", param=where + (f".{sub}" if sub else ""),
                                 code="media_url_not_allowed")
