"""FastChat's conversation templates: OpenAI messages -> the prompt string its workers expect.

A port of `Conversation.get_prompt` from fastchat/conversation.py (fschat 0.2.36) for every
separator style, driven by the template a worker serves at /worker_get_conv_template, and of how
FastChat's own openai_api_server fills it (`get_gen_params`): the last system message wins, user
messages under roles[0], assistant under roles[1], then an empty assistant turn. Checked against
FastChat's real output in tests/fixtures/fastchat_prompts.json.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest

# fastchat.conversation.SeparatorStyle (an IntEnum with auto(): values start at 1)
STYLES = ("ADD_COLON_SINGLE", "ADD_COLON_TWO", "ADD_COLON_SPACE_SINGLE", "NO_COLON_SINGLE", "NO_COLON_TWO",
          "ADD_NEW_LINE_SINGLE", "LLAMA2", "CHATGLM", "CHATML", "CHATINTERN", "DOLLY", "RWKV", "PHOENIX", "ROBIN",
          "FALCON_CHAT", "CHATGLM3", "DEEPSEEK_CHAT", "METAMATH", "YUAN2")


def style_name(sep_style: int | str) -> str:
    if isinstance(sep_style, str):
        return sep_style
    return STYLES[sep_style - 1]


def render(conv: dict[str, Any], messages: list[Any]) -> str:
    """The prompt FastChat would build for these chat messages with this template."""
    system_message = conv.get("system_message") or ""
    turns: list[list[Any]] = [list(m) for m in conv.get("messages") or []]  # few-shot examples stay
    roles = conv["roles"]
    for m in messages:
        if not isinstance(m, dict):
            raise InvalidRequest("Each message must be an object.", param="messages")
        role, content = m.get("role"), m.get("content")
        if isinstance(content, list):
            if any(isinstance(p, dict) and p.get("type") != "text" for p in content):
                raise InvalidRequest("This FastChat backend takes text messages only.", param="messages")
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if role == "system":
            system_message = content or ""
        elif role == "user":
            turns.append([roles[0], content])
        elif role == "assistant":
            turns.append([roles[1], content])
        else:  # FastChat's own server answers 500 here; a clear 400 is better
            raise InvalidRequest(f"FastChat templates have no place for a {role!r} message.", param="messages")
    turns.append([roles[1], None])
    return get_prompt(conv, system_message, turns)


def get_prompt(conv: dict[str, Any], system_message: str, messages: list[list[Any]]) -> str:  # noqa: C901
    style = style_name(conv["sep_style"])
    sep, sep2 = conv.get("sep"), conv.get("sep2")
    roles = conv["roles"]
    system_prompt = (conv.get("system_template") or "{system_message}").format(system_message=system_message)
    if style == "ADD_COLON_SINGLE":
        ret = system_prompt + sep
        for role, message in messages:
            ret += role + ": " + message + sep if message else role + ":"
        return ret
    if style == "ADD_COLON_TWO":
        seps = [sep, sep2]
        ret = system_prompt + seps[0]
        for i, (role, message) in enumerate(messages):
            ret += role + ": " + message + seps[i % 2] if message else role + ":"
        return ret
    if style == "ADD_COLON_SPACE_SINGLE":
        ret = system_prompt + sep
        for role, message in messages:
            ret += role + ": " + message + sep if message else role + ": "
        return ret
    if style == "ADD_NEW_LINE_SINGLE":
        ret = "" if system_prompt == "" else system_prompt + sep
        for role, message in messages:
            ret += role + "\n" + message + sep if message else role + "\n"
        return ret
    if style == "NO_COLON_SINGLE":
        ret = system_prompt
        for role, message in messages:
            ret += role + message + sep if message else role
        return ret
    if style == "NO_COLON_TWO":
        seps = [sep, sep2]
        ret = system_prompt
        for i, (role, message) in enumerate(messages):
            ret += role + message + seps[i % 2] if message else role
        return ret
    if style == "RWKV":
        ret = system_prompt
        for role, message in messages:
            if message:
                ret += role + ": " + message.replace("\r\n", "\n").replace("\n\n", "\n") + "\n\n"
            else:
                ret += role + ":"
        return ret
    if style == "LLAMA2":
        seps = [sep, sep2]
        ret = system_prompt if system_message else "[INST] "
        for i, (_, message) in enumerate(messages):
            tag = roles[i % 2]
            if message:
                ret += message + " " if i == 0 else tag + " " + message + seps[i % 2]
            else:
                ret += tag
        return ret
    if style == "CHATGLM":
        round_add_n = 1 if conv.get("name") == "chatglm2" else 0
        ret = system_prompt + sep if system_prompt else ""
        for i, (role, message) in enumerate(messages):
            if i % 2 == 0:
                ret += f"[Round {i // 2 + round_add_n}]{sep}"
            ret += f"{role}：{message}{sep}" if message else f"{role}："
        return ret
    if style == "CHATML":
        ret = "" if system_prompt == "" else system_prompt + sep + "\n"
        for role, message in messages:
            ret += role + "\n" + message + sep + "\n" if message else role + "\n"
        return ret
    if style == "CHATGLM3":
        ret = system_prompt if system_message else ""
        for role, message in messages:
            ret += role + "\n" + message if message else role
        return ret
    if style == "CHATINTERN":
        seps = [sep, sep2]
        ret = system_prompt
        for i, (role, message) in enumerate(messages):
            if i % 2 == 0:
                ret += "<s>"
            ret += role + ":" + message + seps[i % 2] + "\n" if message else role + ":"
        return ret
    if style == "DOLLY":
        seps = [sep, sep2]
        ret = system_prompt
        for i, (role, message) in enumerate(messages):
            if message:
                ret += role + ":\n" + message + seps[i % 2]
                if i % 2 == 1:
                    ret += "\n\n"
            else:
                ret += role + ":\n"
        return ret
    if style == "PHOENIX":
        ret = system_prompt
        for role, message in messages:
            ret += role + ": <s>" + message + "</s>" if message else role + ": <s>"
        return ret
    if style == "ROBIN":
        ret = system_prompt + sep
        for role, message in messages:
            ret += role + ":\n" + message + sep if message else role + ":\n"
        return ret
    if style == "FALCON_CHAT":
        ret = system_prompt + sep if system_message else ""
        for role, message in messages:
            ret += role + ": " + message + sep if message else role + ":"
        return ret
    if style == "METAMATH":
        ret = "" if system_prompt == "" else system_prompt + sep
        for i, (role, message) in enumerate(messages):
            starting_sep = ":\n" if i % 2 == 0 else ": " + sep2
            ending_sep = sep if i % 2 == 0 else ""
            ret += role + starting_sep + message + ending_sep if message else role + starting_sep
        return ret
    if style == "DEEPSEEK_CHAT":
        seps = [sep, sep2]
        ret = system_prompt
        for i, (role, message) in enumerate(messages):
            ret += role + ": " + message + seps[i % 2] if message else role + ":"
        return ret
    if style == "YUAN2":
        ret = system_prompt + sep2 if system_message else ""
        for _, message in messages:
            if message:
                ret += message + "<n>"
        return ret.rstrip("<n>") + sep  # rstrip of a character set, as FastChat does
    raise InvalidRequest(f"Unknown FastChat separator style {conv.get('sep_style')!r}.")


def stop_params(conv: dict[str, Any], request_stop: Any) -> tuple[list[str], list[int] | None]:
    """(stop strings, stop token ids) as FastChat's API server sends them to a worker: the request's
    stops together with the template's stop_str (openai_api_server.get_gen_params), and the
    template's stop_token_ids."""
    stops = [request_stop] if isinstance(request_stop, str) else list(request_stop or [])
    conv_stop = conv.get("stop_str")
    stops += [conv_stop] if isinstance(conv_stop, str) else list(conv_stop or [])
    return list(dict.fromkeys(s for s in stops if s)), conv.get("stop_token_ids") or None
