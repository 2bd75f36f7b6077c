"""The "model": tokens, stopping criteria, the generation plan and validation.rs' checks."""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

from .defaults import DEFAULT_ANSWER, DEFAULT_GENERATION_LENGTH
from .errors import validation_error
from .grammar import answer_text
from .state import State


@dataclass
class Tok:
    id: int
    text: str
    logprob: float
    special: bool = False

    def doc(self) -> dict:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


EOS = Tok(2, "</s>", -0.0625, True)

_LOGPROBS = (-0.125, -0.5, -0.25, -1.0, -0.375)


def word_tokens(text: str) -> list[str]:
    """Split an answer into tokens: words, every one after the first keeps its leading space."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0]


def tok_id(text: str) -> int:
    return 1000 + zlib.crc32(text.encode()) % 30000


def prompt_length(text: str) -> int:
    return len(text.split())


def simple_tokens(text: str) -> list[dict]:
    return [
        {"id": tok_id(m.group()), "text": m.group(), "start": m.start(), "stop": m.end()}
        for m in re.finditer(r"\S+", text)
    ]


@dataclass
class GenReq:
    """A validated-to-be GenerateRequest: inputs + GenerateParameters (lib.rs)."""

    inputs: str
    params: dict
    ctl: dict


@dataclass
class Plan:
    tokens: list[tuple[Tok, list[Tok]]]
    finish_reason: str
    text: str
    seed: int | None
    input_length: int
    max_new_tokens: int


def make_plan(st: State, req: GenReq, input_length: int, max_total_new: int, seed: int | None) -> Plan:
    ctl = req.ctl
    p = req.params
    grammar_text = answer_text(p.get("grammar")) if "text" not in ctl else None
    words = (
        word_tokens(str(ctl.get("text", grammar_text or DEFAULT_ANSWER)))
        if ctl.get("tool_text") is None
        else word_tokens(ctl["tool_text"])
    )
    eos = bool(ctl.get("eos", True))
    stops: list[str] = p.get("stop") or []
    n_top = p.get("top_n_tokens") or 0
    out: list[tuple[Tok, list[Tok]]] = []
    acc = ""
    reason = "length"
    i = 0
    while True:
        if i < len(words):
            w = words[i]
            tok = Tok(tok_id(w), w, _LOGPROBS[i % len(_LOGPROBS)])
        elif eos:
            tok = EOS
        else:
            w = words[i % len(words)]
            tok = Tok(tok_id(w), w, _LOGPROBS[i % len(_LOGPROBS)])
        top = (
            [tok] + [Tok(50000 + k, f" alt{k}", tok.logprob - 1 - k) for k in range(n_top - 1)]
            if n_top
            else []
        )
        out.append((tok, top))
        i += 1
        # server/text_generation_server/utils/tokens.py StoppingCriteria:
        # length, then EOS, then stop sequences
        if i >= max_total_new:
            reason = "length"
            break
        if tok is EOS:
            reason = "eos_token"
            break
        if stops:
            acc += tok.text
            if any(acc.endswith(s) for s in stops):
                reason = "stop_sequence"
                break
    text = "".join(t.text for t, _ in out if not t.special)  # decoded with skip_special_tokens=True
    return Plan(out, reason, text, seed, input_length, max_total_new)


def validate(st: State, req: GenReq) -> tuple[int, int, int | None, bool]:
    """validation.rs Validation::validate, in its order.

    Returns (input_length, max_total_new_tokens, seed, sampling)."""
    p = req.params
    best_of = 1 if p.get("best_of") is None else p["best_of"]
    sampling = bool(p.get("do_sample")) or any(
        p.get(k) is not None for k in ("temperature", "top_k", "top_p", "typical_p")
    )
    if best_of > 1 and not sampling:
        raise validation_error("you must use sampling when `best_of` is > 1")
    temperature = 1.0 if p.get("temperature") is None else p["temperature"]
    if temperature <= 0.0:
        raise validation_error("`temperature` must be strictly positive")
    rep = 1.0 if p.get("repetition_penalty") is None else p["repetition_penalty"]
    if rep <= 0.0:
        raise validation_error("`repetition_penalty` must be strictly positive")
    freq = 0.0 if p.get("frequency_penalty") is None else p["frequency_penalty"]
    if not -2.0 <= freq <= 2.0:
        raise validation_error("`frequency_penalty` must be >= -2.0 and <= 2.0")
    top_p = p.get("top_p")
    if top_p is not None and (top_p <= 0.0 or top_p >= 1.0):
        raise validation_error("`top_p` must be > 0.0 and < 1.0")
    typical_p = p.get("typical_p")
    if typical_p is not None and (typical_p <= 0.0 or typical_p >= 1.0):
        raise validation_error("`typical_p` must be > 0.0 and < 1.0")
    top_k = p.get("top_k")
    if top_k is not None and top_k <= 0:
        raise validation_error("`top_k` must be strictly positive")
    if p.get("max_new_tokens") == 0:
        raise validation_error("`max_new_tokens` must be strictly positive")
    stops = p.get("stop") or []
    if len(stops) > st.max_stop_sequences:
        raise validation_error(
            f"`stop` supports up to {st.max_stop_sequences} stop sequences. Given: {len(stops)}"
        )
    seed = p.get("seed")
    if seed is None:
        seed = random.getrandbits(64)
    elif best_of > 1:
        raise validation_error("`seed` must not be set when `best_of` > 1")
    top_n = p.get("top_n_tokens")
    if top_n is not None and top_n > st.max_top_n_tokens:
        raise validation_error(f"`top_n_tokens` must be >= 0 and <= {st.max_top_n_tokens}. Given: {top_n}")
    if req.inputs == "":
        raise validation_error("`inputs` cannot be empty")
    truncate = p.get("truncate")
    if truncate is not None and (truncate == 0 or truncate > st.max_input_tokens):
        raise validation_error(
            f"`truncate` must be strictly positive and less than {st.max_input_tokens}. " f"Given: {truncate}"
        )
    n_in = prompt_length(req.inputs)
    input_length = min(n_in, truncate) if truncate is not None else n_in
    mnt = p.get("max_new_tokens")
    if mnt is not None:
        max_new, max_total_new = min(mnt, DEFAULT_GENERATION_LENGTH), mnt
    else:
        max_total_new = max(st.max_total_tokens - input_length, 0)
        max_new = min(max_total_new, DEFAULT_GENERATION_LENGTH)
    if input_length + max_new > st.max_total_tokens:
        raise validation_error(
            f"`inputs` tokens + `max_new_tokens` must be <= {st.max_total_tokens}. Given: "
            f"{input_length} `inputs` tokens and {max_new} `max_new_tokens`"
        )
    if input_length > st.max_input_tokens:
        raise validation_error(
            f"`inputs` must have less than {st.max_input_tokens} tokens. Given: {input_length}"
        )
    answer_text(p.get("grammar"))  # validation.rs:348-409: grammar checks come after the input's
    # python NextTokenChooser: sampling when do_sample or any warper differs from its neutral value
    do_sample = (
        bool(p.get("do_sample"))
        or temperature != 1.0
        or bool(top_k)
        or (top_p is not None and top_p < 1)
        or (typical_p is not None and typical_p < 1)
    )
    return input_length, max_total_new, seed, do_sample
