"""Type specs of TGI's request bodies (lib.rs GenerateRequest, ChatRequest, CompletionRequest, ...)."""

from __future__ import annotations

from typing import Any

from .deserialize import DeError, check, check_struct, prompt_spec, tagged
from .json_parser import Node


GRAMMAR = tagged(
    "GrammarType",
    "type",
    {
        "json": "any",
        "json_object": "any",
        "regex": "str",
        "json_schema": (
            "struct",
            "JsonSchemaConfig",
            {"name": (("opt", "str"), False), "schema": ("any", True)},
        ),
    },
    content="value",
)

GENERATE_PARAMETERS = (
    "struct",
    "GenerateParameters",
    {
        "best_of": (("opt", "usize"), False),
        "temperature": (("opt", "f32"), False),
        "repetition_penalty": (("opt", "f32"), False),
        "frequency_penalty": (("opt", "f32"), False),
        "top_k": (("opt", "i32"), False),
        "top_p": (("opt", "f32"), False),
        "typical_p": (("opt", "f32"), False),
        "do_sample": ("bool", False),
        "max_new_tokens": (("opt", "u32"), False),
        "return_full_text": (("opt", "bool"), False),
        "stop": (("vec", "str"), False),
        "truncate": (("opt", "usize"), False),
        "watermark": ("bool", False),
        "details": ("bool", False),
        "decoder_input_details": ("bool", False),
        "seed": (("opt", "u64"), False),
        "top_n_tokens": (("opt", "u32"), False),
        "grammar": (("opt", GRAMMAR), False),
        "adapter_id": (("opt", "str"), False),
    },
)

GENERATE_REQUEST = (
    "struct",
    "GenerateRequest",
    {"inputs": ("str", True), "parameters": (GENERATE_PARAMETERS, False)},
)

COMPAT_REQUEST = (
    "struct",
    "CompatGenerateRequest",
    {"inputs": ("str", True), "parameters": (GENERATE_PARAMETERS, False), "stream": ("bool", False)},
)

FUNCTION_DEFINITION = (
    "struct",
    "FunctionDefinition",
    {"description": (("opt", "str"), False), "name": ("str", True), "arguments": ("any", True)},
    {"parameters": "arguments"},
)

TOOL = ("struct", "Tool", {"type": ("str", True), "function": (FUNCTION_DEFINITION, True)})

TOOL_CALL = (
    "struct",
    "ToolCall",
    {"id": ("str", True), "type": ("str", True), "function": (FUNCTION_DEFINITION, True)},
)

MESSAGE_CHUNK = tagged(
    "MessageChunk",
    "type",
    {
        "text": ("struct", "Text", {"text": ("str", True)}),
        "image_url": ("struct", "ImageUrl", {"image_url": (("struct", "Url", {"url": ("str", True)}), True)}),
    },
)


def message_spec(n: Node, path: str) -> dict:
    # Message { role, #[serde(flatten)] body: untagged MessageBody { content | tool_calls }, name }
    # flatten buffers the whole object: serde reports any error after it, without a deeper path
    try:
        m = check_struct(n, "Message", {"role": ("str", True), "name": (("opt", "str"), False)}, path, {})
    except DeError as e:
        raise DeError(path, e.msg, n.end) from None
    items = {k: v for k, _, v in n.items}
    for key, spec in (
        ("content", ("untagged", "MessageContent", ["str", ("vec", MESSAGE_CHUNK)])),
        ("tool_calls", ("vec", TOOL_CALL)),
    ):
        if key in items:
            try:
                m[key] = check(items[key], spec, path)
                return m
            except DeError:
                pass
    raise DeError(path, "data did not match any variant of untagged enum MessageBody", n.end)


def tool_choice_spec(n: Node, path: str) -> Any:
    if n.kind == "null":
        return "auto"
    if n.kind == "str":
        return n.value
    try:
        v = check(
            n,
            tagged(
                "TypedChoice",
                "type",
                {
                    "function": (
                        "struct",
                        "Function",
                        {"function": (("struct", "FunctionName", {"name": ("str", True)}), True)},
                    )
                },
            ),
            path,
        )
        return {"function": v["function"]["name"]}
    except DeError:
        raise DeError(
            path, "data did not match any variant of untagged enum ToolTypeDeserializer", n.end
        ) from None


CHAT_REQUEST = (
    "struct",
    "ChatRequest",
    {
        "model": (("opt", "str"), False),
        "messages": (("vec", message_spec), True),
        "frequency_penalty": (("opt", "f32"), False),
        "logit_bias": (("opt", ("vec", "f32")), False),
        "logprobs": (("opt", "bool"), False),
        "top_logprobs": (("opt", "u32"), False),
        "max_tokens": (("opt", "u32"), False),
        "n": (("opt", "u32"), False),
        "presence_penalty": (("opt", "f32"), False),
        "stop": (("opt", ("vec", "str")), False),
        "stream": ("bool", False),
        "seed": (("opt", "u64"), False),
        "temperature": (("opt", "f32"), False),
        "top_p": (("opt", "f32"), False),
        "tools": (("opt", ("vec", TOOL)), False),
        "tool_prompt": (("opt", "str"), False),
        "tool_choice": (tool_choice_spec, False),
        "response_format": (("opt", GRAMMAR), False),
        "stream_options": (("struct", "StreamOptions", {"include_usage": ("bool", False)}), False),
    },
    {"max_completion_tokens": "max_tokens"},
)

COMPLETION_REQUEST = (
    "struct",
    "CompletionRequest",
    {
        "model": (("opt", "str"), False),
        "prompt": (prompt_spec, True),
        "max_tokens": (("opt", "u32"), False),
        "temperature": (("opt", "f32"), False),
        "top_p": (("opt", "f32"), False),
        "stream": ("bool", False),
        "seed": (("opt", "u64"), False),
        "suffix": (("opt", "str"), False),
        "repetition_penalty": (("opt", "f32"), False),
        "frequency_penalty": (("opt", "f32"), False),
        "stop": (("opt", ("vec", "str")), False),
    },
)
