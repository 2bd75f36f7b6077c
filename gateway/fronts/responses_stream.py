"""A chat completions stream as the Responses API's typed events (gateway/fronts/responses.py).

The events, in OpenAI's order: `response.created`, `response.in_progress`; per output item
`response.output_item.added`, then for a message `response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`; for reasoning the same with `reasoning_text`; for a
function call `response.function_call_arguments.delta`..., `response.function_call_arguments.done`; then
`response.output_item.done`; and last `response.completed` (or `response.incomplete` at the length limit)
with the whole response and its usage. A failure after the start sends `error` and `response.failed`.
Every event carries its `sequence_number`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.fronts.bridge import reasoning
from gateway.fronts.responses_translate import new_id, response_doc, usage_doc


class _Item:
    """One output item being streamed: a message or reasoning (text parts) or a function call."""

    __slots__ = ("index", "doc", "text")

    def __init__(self, index: int, doc: dict[str, Any]) -> None:
        self.index, self.doc, self.text = index, doc, ""


class ResponseStream:
    def __init__(self, body: dict[str, Any], rid: str) -> None:
        self.body, self.rid = body, rid
        self.created = int(time.time())
        self.seq = 0
        self.items: list[_Item] = []       # in output order
        self.open: _Item | None = None     # the message or reasoning item receiving text
        self.calls: dict[int, _Item] = {}  # chat tool call index -> its function_call item
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.ended = False
        self.output: list[dict[str, Any]] = []

    def _event(self, kind: str, doc: dict[str, Any]) -> bytes:
        doc = {"type": kind, "sequence_number": self.seq, **doc}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"

    def _response(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        return response_doc(self.body, self.rid, self.created, status, output, self.usage)

    def start(self) -> bytes:
        doc = self._response("in_progress", [])
        return self._event("response.created", {"response": doc}) + self._event("response.in_progress",
                                                                                 {"response": doc})

    def _add(self, doc: dict[str, Any]) -> tuple[_Item, bytes]:
        item = _Item(len(self.items), doc)
        self.items.append(item)
        added = {k: ([] if k == "content" else v) for k, v in doc.items()}
        return item, self._event("response.output_item.added", {"output_index": item.index, "item": added})

    def _text(self, kind: str, delta: str) -> bytes:
        """Text for the open message (kind "output_text") or reasoning ("reasoning_text") item."""
        out = b""
        if self.open is not None and self.open.doc["type"] != ("message" if kind == "output_text" else "reasoning"):
            out += self._close(self.open)
        if self.open is None:
            if kind == "output_text":
                doc = {"type": "message", "id": new_id("msg"), "status": "in_progress", "role": "assistant",
                       "content": []}
                part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            else:
                doc = {"type": "reasoning", "id": new_id("rs"), "summary": [], "content": []}
                part = {"type": "reasoning_text", "text": ""}
            self.open, added = self._add(doc)
            out += added + self._event("response.content_part.added", {
                "item_id": doc["id"], "output_index": self.open.index, "content_index": 0, "part": part})
        item = self.open
        item.text += delta
        extra = {"logprobs": []} if kind == "output_text" else {}
        return out + self._event(f"response.{kind}.delta", {"item_id": item.doc["id"], "output_index": item.index,
                                                             "content_index": 0, "delta": delta, **extra})

    def _close(self, item: _Item) -> bytes:
        doc, out = item.doc, b""
        if doc["type"] == "function_call":
            doc["arguments"], doc["status"] = item.text or "{}", "completed"
            out += self._event("response.function_call_arguments.done", {
                "item_id": doc["id"], "output_index": item.index, "arguments": doc["arguments"]})
        else:
            kind = "output_text" if doc["type"] == "message" else "reasoning_text"
            part: dict[str, Any] = {"type": kind, "text": item.text}
            if kind == "output_text":
                part |= {"annotations": [], "logprobs": []}
                doc["status"] = "completed"
            doc["content"] = [part]
            ids = {"item_id": doc["id"], "output_index": item.index, "content_index": 0}
            out += self._event(f"response.{kind}.done", {**ids, "text": item.text})
            out += self._event("response.content_part.done", {**ids, "part": part})
        if item is self.open:
            self.open = None
        return out + self._event("response.output_item.done", {"output_index": item.index, "item": doc})

    def chunk(self, doc: dict[str, Any]) -> bytes:
        """One chat completion chunk's events."""
        out = b""
        if isinstance(doc.get("usage"), dict):
            self.usage = usage_doc(doc["usage"])
        for choice in doc.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            thought = reasoning(delta)
            if isinstance(thought, str) and thought:
                out += self._text("reasoning_text", thought)
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self._text("output_text", delta["content"])
            for call in delta.get("tool_calls") or []:
                out += self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _call(self, call: dict[str, Any]) -> bytes:
        out = b""
        n = call.get("index", 0)
        fn = call.get("function") or {}
        item = self.calls.get(n)
        if item is None:
            if self.open is not None:
                out += self._close(self.open)
            item, added = self._add({"type": "function_call", "id": new_id("fc"),
                                     "call_id": call.get("id") or new_id("call"), "name": fn.get("name") or "",
                                     "arguments": "", "status": "in_progress"})
            self.calls[n] = item
            out += added
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            item.text += args
            out += self._event("response.function_call_arguments.delta",
                               {"item_id": item.doc["id"], "output_index": item.index, "delta": args})
        return out

    def end(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        out = b"".join(self._close(i) for i in self.items if i.doc.get("status") == "in_progress"
                       or (i.doc["type"] == "reasoning" and not i.doc["content"]))
        self.output = [i.doc for i in self.items]
        status = "incomplete" if self.finish == "length" else "completed"
        return out + self._event(f"response.{status}", {"response": self._response(status, self.output)})

    def fail(self, message: str) -> bytes:
        self.ended = True
        doc = self._response("failed", [i.doc for i in self.items])
        doc["error"] = {"code": "server_error", "message": message}
        return (self._event("error", {"code": "server_error", "message": message, "param": None})
                + self._event("response.failed", {"response": doc}))
