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
# Anthropic's image and document blocks: {"type": "image", "source": {"type": "url", "url": ...}}.
ANTHROPIC_KEYS = MEDIA_KEYS | {"source"}
# A URL scheme (`http:`, `file:`, `s3:`...); base64 payloads have no colon, so they never match.
SCHEME_RE = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*:")


def refuse_media_links(body: dict[str, Any], nested: bool = False) -> None:
    """Raise InvalidRequest for the first media link in the body's chat messages. `nested`: Anthropic
    Messages, whose blocks name media under `source` and whose tool results hold blocks of their own."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    keys = ANTHROPIC_KEYS if nested else MEDIA_KEYS
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            _blocks(content, f"messages[{i}].content", keys, nested)


def _blocks(content: list[Any], where: str, keys: frozenset[str], nested: bool) -> None:
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key in keys:
                _check(value, f"{where}[{j}].{key}")
            elif nested and key == "content" and isinstance(value, list):
                _blocks(value, f"{where}[{j}].content", keys, nested)


def _check(value: Any, where: str) -> None:
    items = value.items() if isinstance(value, dict) else [("", value)]
    for sub, v in items:
        if isinstance(v, str) and SCHEME_RE.match(v) and not v.lstrip()[:5].lower() == "data:":
            raise InvalidRequest(f"Media links are not accepted for this model: send {where} inline as a "
                                 "base64 data: URL.", param=where + (f".{sub}" if sub else ""),
                                 code="media_url_not_allowed")
