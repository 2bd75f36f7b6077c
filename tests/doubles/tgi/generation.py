"""Scheduling and running generations: permits, queue/batch gauges, Infer::generate, generate_internal and
generate_stream_internal (server.rs)."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator

from .defaults import DEFAULT_FAILURE
from .errors import InferError, validation_error
from .model import GenReq, Plan, Tok, make_plan, tok_id, validate
from .state import State


class Generation:
    """One scheduled request: holds a permit of the semaphore from start() to finish()."""

    def __init__(self, st: State, req: GenReq) -> None:
        self.st, self.req, self.ctl = st, req, req.ctl
        self.finished = False
        self.ended = False
        self.in_batch = False
        self.in_queue = False
        self.plan: Plan | None = None

    def start(self) -> "Generation":
        st = self.st
        if st.permits >= st.max_concurrent:  # Semaphore::try_acquire_owned
            st.fail("overloaded")
            st.overloaded += 1
            raise InferError("overloaded")
        st.permits += 1
        st.max_in_flight = max(st.max_in_flight, st.permits)
        try:
            input_length, max_total_new, seed, sampling = validate(st, self.req)
        except InferError:
            st.fail("validation")
            self.finish()
            raise
        self.plan = make_plan(st, self.req, input_length, max_total_new, seed if sampling else None)
        st.queued += 1
        self.in_queue = True
        st.sync_gauges()
        return self

    async def tokens(self) -> AsyncIterator[tuple[int, Tok, list[Tok], bool]]:
        """Yields (i, token, top_tokens, is_end). Raises InferError("generation") on injected failure;
        returns without an end token on injected incompleteness."""
        st, ctl, plan = self.st, self.ctl, self.plan
        assert plan is not None
        if ctl.get("hold"):
            st.held += 1
            try:
                await st.release.wait()
            finally:
                st.held -= 1
        self.in_queue = False
        st.queued -= 1
        self.in_batch = True
        st.batch += 1
        st.batch_tokens += plan.input_length + plan.max_new_tokens
        st.sync_gauges()
        delay = float(ctl.get("delay", st.token_delay) or 0)
        for i, (tok, top) in enumerate(plan.tokens):
            if ctl.get("fail_after") is not None and i >= int(ctl["fail_after"]):
                st.fail("generation")
                raise InferError("generation", str(ctl.get("message", DEFAULT_FAILURE)))
            if ctl.get("incomplete") is not None and i >= int(ctl["incomplete"]):
                return
            if delay:
                await asyncio.sleep(delay)
            last = i == len(plan.tokens) - 1
            if last:
                self.ended = True
                st.count("tgi_request_success")
            yield i, tok, top, last
            if ctl.get("hold_after") is not None and i + 1 == int(ctl["hold_after"]) and not last:
                st.held += 1
                try:
                    await st.release.wait()
                finally:
                    st.held -= 1

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        st = self.st
        st.permits -= 1
        if self.in_queue:
            st.queued -= 1
        if self.in_batch:
            st.batch -= 1
            st.batch_tokens -= self.plan.input_length + self.plan.max_new_tokens if self.plan else 0
        if self.plan is not None:
            st.sync_gauges()
        if self.ended:
            st.completed += 1


def details_doc(
    plan: Plan,
    toks: list[Tok],
    tops: list[list[Tok]],
    prefill: list,
    use_top: bool,
    best_of_sequences: list | None = None,
) -> dict:
    d: dict[str, Any] = {
        "finish_reason": plan.finish_reason,
        "generated_tokens": len(toks),
        "seed": plan.seed,
        "prefill": prefill,
        "tokens": [t.doc() for t in toks],
    }
    if best_of_sequences is not None:
        d["best_of_sequences"] = best_of_sequences
    if use_top and any(tops):
        d["top_tokens"] = [[t.doc() for t in top] for top in tops]
    return d


def prefill_doc(inputs: str) -> list[dict]:
    words = inputs.split()
    return [
        {"id": tok_id(w), "text": w if i == 0 else " " + w, "logprob": float("nan") if i == 0 else -2.5}
        for i, w in enumerate(words)
    ]


@dataclass
class InferResponse:
    plan: Plan
    toks: list[Tok]
    tops: list[list[Tok]]
    text: str
    queued: float
    start: float


async def infer_generate(st: State, req: GenReq) -> InferResponse:
    """infer/mod.rs Infer::generate: run a generation to its end or raise."""
    t0 = time.monotonic()
    g = Generation(st, req).start()
    try:
        toks, tops = [], []
        started = time.monotonic()
        ended = False
        async with aclosing(g.tokens()) as tokens:
            async for _, tok, top, last in tokens:
                toks.append(tok)
                tops.append(top)
                ended = last
        if not ended:
            st.fail("incomplete")
            raise InferError("incomplete_generation")
        assert g.plan is not None
        return InferResponse(g.plan, toks, tops, g.plan.text, t0, started)
    except asyncio.CancelledError:
        st.fail("dropped")
        st.cancelled += 1
        raise
    finally:
        g.finish()


async def generate_internal(st: State, req: GenReq) -> tuple[dict, int, dict]:
    """server.rs generate_internal: (headers, input_length, GenerateResponse)."""
    start = time.monotonic()
    st.count("tgi_request_count")
    p = req.params
    add_prompt = req.inputs if p.get("return_full_text") else None
    want_details = bool(p.get("details")) or bool(p.get("decoder_input_details"))
    best_of = p.get("best_of")
    others: list[InferResponse] = []
    if best_of is not None and best_of > 1:
        if st.max_best_of == 1:
            raise validation_error("`best_of` != 1 is not allowed for this endpoint")
        if best_of > st.max_best_of:
            raise validation_error(f"`best_of` must be > 0 and <= {st.max_best_of}. Given: {best_of}")
        results = await asyncio.gather(
            *(infer_generate(st, req) for _ in range(best_of)), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        resp, others = results[0], list(results[1:])
    else:
        resp = await infer_generate(st, req)
    prefill = prefill_doc(req.inputs) if p.get("decoder_input_details") else []
    use_top = bool(p.get("top_n_tokens"))
    details = None
    if want_details:
        bos = None
        if others:
            bos = []
            for o in others:
                text = (add_prompt or "") + o.text
                seq = {
                    "generated_text": text,
                    "finish_reason": o.plan.finish_reason,
                    "generated_tokens": len(o.toks),
                    "seed": o.plan.seed,
                    "prefill": prefill,
                    "tokens": [t.doc() for t in o.toks],
                }
                if use_top and any(o.tops):
                    seq["top_tokens"] = [[t.doc() for t in top] for top in o.tops]
                bos.append(seq)
        details = details_doc(resp.plan, resp.toks, resp.tops, prefill, use_top, bos)
    now = time.monotonic()
    total, validation_t = now - start, resp.queued - start
    queue_t, inference_t = resp.start - resp.queued, now - resp.start
    n = len(resp.toks)
    headers = {
        "x-compute-type": st.compute_type,
        "x-compute-time": f"{total:.9f}".rstrip("0").rstrip("."),
        "x-compute-characters": str(len(req.inputs)),
        "x-total-time": str(int(total * 1000)),
        "x-validation-time": str(int(validation_t * 1000)),
        "x-queue-time": str(int(queue_t * 1000)),
        "x-inference-time": str(int(inference_t * 1000)),
        "x-time-per-token": str(int(inference_t * 1000 / n)),
        "x-prompt-tokens": str(resp.plan.input_length),
        "x-generated-tokens": str(n),
    }
    text = (add_prompt or "") + resp.text
    doc: dict[str, Any] = {"generated_text": text}
    if details is not None:
        doc["details"] = details
    return headers, resp.plan.input_length, doc


async def stream_internal(st: State, req: GenReq) -> AsyncIterator[dict | InferError]:
    """server.rs generate_stream_internal: StreamResponse dicts (with the Tok objects under "_tok") or
    InferErrors, in order; the permit is released when this generator closes."""
    st.count("tgi_request_count")
    p = req.params
    add_prompt = req.inputs if p.get("return_full_text") else None
    if p.get("best_of") is not None and p["best_of"] != 1:
        st.fail("validation")
        yield validation_error("`best_of` != 1 is not supported when streaming tokens")
        return
    if p.get("decoder_input_details"):
        st.fail("validation")
        yield validation_error("`decoder_input_details` == true is not supported when streaming tokens")
        return
    try:
        g = Generation(st, req).start()
    except InferError as e:
        yield e
        return
    end_reached = error = False
    tokens = g.tokens()
    try:
        index = 0
        async for _, tok, top, last in tokens:
            index += 1
            ev: dict[str, Any] = {"index": index, "token": tok.doc()}
            if top:
                ev["top_tokens"] = [t.doc() for t in top]
            ev["generated_text"] = None
            ev["details"] = None
            ev["_tok"], ev["_top"] = tok, top
            if last:
                assert g.plan is not None
                end_reached = True
                ev["generated_text"] = (add_prompt or "") + g.plan.text
                if p.get("details"):
                    ev["details"] = {
                        "finish_reason": g.plan.finish_reason,
                        "generated_tokens": index,
                        "seed": g.plan.seed,
                        "input_length": g.plan.input_length,
                    }
                ev["_plan"] = g.plan
                yield ev
                break
            yield ev
    except InferError as e:
        error = True
        yield e
    except (asyncio.CancelledError, GeneratorExit):
        if not end_reached:
            st.fail("dropped")
            st.cancelled += 1
        raise
    finally:
        await tokens.aclose()
        g.finish()
    if not end_reached and not error:
        st.fail("incomplete")
        yield InferError("incomplete_generation_stream")


def public(ev: dict) -> dict:
    return {k: v for k, v in ev.items() if not k.startswith("_")}
