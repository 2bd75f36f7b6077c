"""The OpenAI inference endpoints: POST /v1/chat/completions, /v1/completions, /v1/embeddings.

Raw ASGI on purpose: this is every token's path, and a framework's per-request objects,
dependency injection and whole-body validation cost more than the rest of the hop. It reads
top to bottom as: auth -> body -> routing fields -> route -> pick deployment -> adapter builds
the upstream request -> send -> relay (retry elsewhere while nothing reached the client).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from adapters.base import Endpoint, anthropic_usage, responses_usage
from gateway.api.asgi import (CLOSE, BodyRead, BodySlots, ClientGone, DisconnectWatch, Receive, Scope, Send, header,
                              is_json_media_type, send_error, send_json)
from gateway.api.client_writer import client_transport
from gateway.api.reply import Reply, start_sse
from gateway.auth.keys import model_not_allowed
from gateway.balancer import pick
from gateway.errors import GatewayError, Unauthorized, UnsupportedMediaType, UpstreamTimeout
from gateway.http1 import Response
from gateway.jsonio import loads_or_none
from gateway.passive_health import PassiveHealth
from gateway.protocol import parse_body, routing_fields
from gateway.routing import Deployment, Route
from gateway.runtime import Gateway
from gateway.streaming import (DONE_EVENT, MessagesTap, ResponsesTap, StreamTap, await_with_keepalives,
                               peek_first_event, relay_events, stream_end)
from gateway.upstream import map_transport_errors

log = logging.getLogger("gateway.proxy")

CLIENT_CLOSED = 499  # nginx's convention, for metrics only: nobody receives it
LOGGED_BODY = 2048  # characters of a backend's 5xx text kept in the log


class ProxyEndpoint:
    def __init__(self, gw: Gateway, endpoint: Endpoint, body_slots: BodySlots | None,
                 health: PassiveHealth, label: str | None = None) -> None:
        self.gw = gw
        self.endpoint = endpoint
        self.label = label or endpoint.value  # the metrics' `endpoint`: a front's own (gateway/fronts/)
        # The natively passed-through protocols: their own usage shape and stream end (no [DONE])
        self.native_usage = {Endpoint.RESPONSES: responses_usage, Endpoint.MESSAGES: anthropic_usage}.get(endpoint)
        self.native_tap = {Endpoint.RESPONSES: ResponsesTap, Endpoint.MESSAGES: MessagesTap}.get(endpoint)
        # Counting a prompt's tokens generates nothing: no request or token limit is charged for it
        self.limited = endpoint is not Endpoint.COUNT_TOKENS
        self.body_slots = body_slots  # shared by the inference endpoints of one gateway
        self.health = health

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        t0 = time.perf_counter()
        model = backend = ""
        status = 500
        watch: DisconnectWatch | None = None
        reply = Reply()
        adm = ident = None
        try:
            if gw.api_keys:
                ident = gw.keys.identify(header(scope, b"authorization") or header(scope, b"x-api-key"))
                if ident is None:
                    # Sent before the body is read: close, or the refused client's upload is read and discarded.
                    raise Unauthorized("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                                       headers=dict(CLOSE))
            ctype = header(scope, b"content-type")
            if ctype != b"application/json" and not is_json_media_type(ctype):
                # 415, not 400: the body may be fine, its declared type is not (and a cross-site
                # page can send text/plain or a form without a CORS preflight, never JSON).
                raise UnsupportedMediaType("Send the request body as JSON with 'Content-Type: application/json'.",
                                           headers=dict(CLOSE))
            reader = BodyRead(self.body_slots)
            try:
                raw = reply.raw = await reader.read(scope, receive, gw.max_body)
                body = parse_body(raw)
            finally:
                reader.release()
            name, stream, needs = routing_fields(self.endpoint, body)
            route = gw.table.resolve(name)
            model = route.name
            if ident is not None:
                if not ident.allows(model):
                    raise model_not_allowed(model)
                if ident.subjects and self.limited:  # limits: reserve before, settle in `finally`
                    gk = gw.gatekeeper
                    if gk.c_admit is not None:  # the C store, called straight
                        adm = gk.c_admit(ident.plan, body, len(raw), reply.rid)
                        if type(adm) is tuple:  # a refusal's reading
                            raise gk.refused_c(ident, adm, body, len(raw), reply.rid)
                    else:
                        adm = (gk.admit_now(ident, body, len(raw), reply.rid) if gk.local
                               else await gk.admit(ident, body, len(raw), reply.rid))
                    reply.limits = adm
            session = None
            if gw.affinity:
                sid = header(scope, b"x-session-id")
                if sid:
                    session = sid.decode("latin-1")
                elif gw.affinity_from_user and type(body.get("user")) is str:
                    session = body["user"]
            watch = DisconnectWatch(receive)
            status, backend = await self.serve(route, body, stream, needs, send, t0, watch, session, reply)
        except GatewayError as err:
            status = err.status
            if status >= 500:  # the id finds the gateway's log lines about it (a 5xx's details are there)
                err.message = f"{err.message}; request id {reply.rid.decode()}"
            if reply.committed:  # the SSE response had started (keepalives only): end it with the error
                await send({"type": "http.response.body", "body": err.sse_event() + DONE_EVENT, "more_body": False})
            else:
                await send_error(send, err, reply.headers())
        except ClientGone:
            status = CLIENT_CLOSED
        except asyncio.CancelledError:
            if watch is None or not watch.gone:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            status = CLIENT_CLOSED
        except Exception:  # a gateway bug: log it, answer in the envelope if headers are not out yet
            log.exception("unhandled error serving %s (request id %s)", self.label, reply.rid.decode())
            try:
                await send_error(send, GatewayError("The gateway hit an internal error; it has been logged (request "
                                                    f"id {reply.rid.decode()})."), reply.headers())
            except RuntimeError:
                pass
        finally:
            if watch is not None:
                watch.close()
            end = time.perf_counter()
            m = gw.metrics
            m.observe_request(self.label, model, backend or reply.backend, status, end - t0)
            if reply.own >= 0:
                m.observe_overhead(self.label, reply.own + (end - reply.read_at if reply.read_at else 0.0))
            if ident is not None:   # a key: its usage (names only), then its limits settled
                p, c = reply.usage or (0, 0)
                row = ident.counts  # llm_gateway_key_* (metrics.KeyCounters): counted here, without a call
                row[status // 100 if 100 <= status < 600 else 5] += 1
                row[6] += p
                row[7] += c
                if gw.usage is not None:
                    gw.usage.record(ident.name, model, ident.team, p, c, status, False, end - t0)
                if adm is not None:  # settled to the usage report; without one, the estimate if a backend answered
                    used = p + c if reply.usage is not None else adm.estimate if status < 400 or reply.committed else 0
                    gk = gw.gatekeeper
                    if gk.c_finish is not None:
                        try:
                            gk.c_finish(adm, used, True, True)
                        except Exception:  # it never raises by contract; a bug must not fail the request's end
                            log.exception("limits: settling request %s failed", reply.rid.decode())
                    elif gk.local:
                        gk.done_now(adm, used)
                    else:
                        await gk.done(adm, used)

    async def serve(self, route: Route, body: dict[str, Any], stream: bool, needs: int, send: Send,
                    t0: float, watch: DisconnectWatch, session: str | None, reply: Reply) -> tuple[int, str]:
        """The model's own deployments first, then its fallback models, in order, for as long as
        each fails before anything reached the client."""
        try:
            return await self.dispatch(route, body, stream, needs, send, t0, watch, session, reply)
        except GatewayError as err:
            if not route.fallbacks or not (err.retryable or err.code == "no_ready_deployment"):
                raise
            last = err
        for name in route.fallbacks:
            fallback = self.gw.table.by_name.get(name)
            if fallback is None:
                continue
            if time.perf_counter() - t0 > self.gw.retry_deadline:  # a fallback is a new attempt too
                break
            log.info("model %s cannot serve (%s): falling back to %s", route.name, last.message, fallback.name)
            self.gw.metrics.observe_retry(route.name)
            self.gw.metrics.observe_fallback(route.name, fallback.name)
            try:
                return await self.dispatch(fallback, body, stream, needs, send, t0, watch, session, reply)
            except GatewayError as err:
                if not (err.retryable or err.code == "no_ready_deployment"):
                    raise
                last = err
        raise last

    async def dispatch(self, route: Route, body: dict[str, Any], stream: bool, needs: int, send: Send,
                       t0: float, watch: DisconnectWatch, session: str | None, reply: Reply) -> tuple[int, str]:
        """Try deployments until one answers; retry only while nothing reached the client."""
        gw = self.gw
        tried: tuple[Deployment, ...] = ()
        last: GatewayError | None = None
        own_from = t0
        for attempt in range(gw.max_attempts):
            try:
                dep = pick(route, needs, tried, session)
            except GatewayError as err:
                if last is not None:
                    raise last from None
                if gw.supervisor is None or err.code != "no_ready_deployment":
                    raise
                # A backend the gateway runs itself is stopped or starting: hold the request until it serves.
                waiting, wait_from = gw.supervisor.wait_for(route, needs), time.perf_counter()
                if stream and gw.stream_keepalive:
                    woke = await await_with_keepalives(waiting, send, gw.stream_keepalive,
                                                       lambda: start_sse(send, reply, None))
                else:
                    woke = await waiting
                if not woke:
                    raise
                own_from += time.perf_counter() - wait_from  # the start-up is not the gateway's own time
                dep = pick(route, needs, tried, session)
            b = dep.backend
            reply.backend = b.name
            adapter = b.adapter
            gauge = gw.metrics.in_flight_child(b.name)
            b.in_flight += 1
            gauge.inc()
            limiter = b.limiter
            acquired = False
            req = None
            try:
                if limiter is not None:
                    queued_at = time.perf_counter()
                    await limiter.acquire()  # 429 when its bounded queue is full or the wait too long
                    acquired = True
                    waited = time.perf_counter() - queued_at
                    gw.metrics.observe_queue_wait(b.name, waited)
                    own_from += waited  # the wait is not the gateway's own time
                # A fresh shallow copy per attempt: the adapter patches it, a retry must not see that.
                if adapter.needs_prepare:
                    req = await adapter.prepare(self.endpoint, dict(body), dep.upstream_model, stream,
                                                gw.upstream.fetch)
                else:
                    req = adapter.build_request(self.endpoint, dict(body), dep.upstream_model, stream)
                if reply.own < 0:  # the first attempt: all before it is the gateway's own work
                    reply.own = time.perf_counter() - own_from
                if stream and gw.stream_keepalive:
                    resp = await self.open_with_keepalive(req, b.name, send, reply)
                else:
                    resp = await gw.upstream.open(req, b.name)
                if resp.status >= 400:
                    try:
                        with map_transport_errors(b.name):
                            data = await resp.read()
                    finally:
                        resp.release()
                    err = adapter.map_error(resp.status, data)
                    if err.upstream_text is not None and err.status >= 500:
                        err.upstream_text = data[:LOGGED_BODY].decode("utf-8", "replace")  # the log shows it whole
                    if resp.status == 502 or resp.status == 504:
                        self.health.failure(b, None, f"HTTP {resp.status}", dep.upstream_model)
                    elif resp.status >= 500 and resp.status != 501 and resp.status != 503:
                        self.health.failure(b, hash(reply.raw), f"HTTP {resp.status}", dep.upstream_model)
                    raise err
                result = await self.respond(resp, req, dep, route.name, send, t0, watch, reply)
                b.errors_in_row = 0
                if b.model_errors:
                    b.model_errors.pop(dep.upstream_model, None)
                return result
            except GatewayError as err:
                if err.upstream_text is not None and err.status >= 500:
                    # A backend's own words about its failure may carry tracebacks, DSNs or internal
                    # hosts: the operator reads them in the log, the client gets who and a request id.
                    log.warning("backend %s failed (HTTP %d), request id %s: %r", b.name, err.upstream_status,
                                reply.rid.decode(), err.upstream_text[:LOGGED_BODY])
                    err.message = f"backend {b.name} failed (HTTP {err.upstream_status})"
                    err.upstream_text = None
                elif isinstance(err, UpstreamTimeout):
                    self.health.failure(b, hash(reply.raw), "a timeout", dep.upstream_model)
                gw.metrics.observe_upstream_error(b.name, err.code, err.status)
                if err.status == 429:
                    gw.metrics.observe_rejection(b.name, getattr(err, "reason", "backend"))
                same_backend = err.retry_same_backend
                if err.code == "upstream_connect_failed":
                    # One of several processes behind the backend (a FastChat worker) may be gone
                    # while the others serve: the adapter decides; else the backend is taken out.
                    same_backend = same_backend or (req is not None and adapter.connect_failed(req))
                    if not same_backend:
                        gw.mark_failed(b, err.message)
                elif err.backend_state is not None:
                    gw.mark_state(b, err.backend_state, err.message)
                if (not err.retryable or attempt + 1 >= gw.max_attempts
                        or time.perf_counter() - t0 > gw.retry_deadline):
                    raise
                log.info("retrying %s elsewhere after %s: %s", route.name, b.name, err.message)
                gw.metrics.observe_retry(route.name)
                if not same_backend:
                    tried += (dep,)
                last = err
            finally:
                if acquired:
                    limiter.release()
                b.in_flight -= 1
                gauge.dec()
                if b.managed is not None:
                    b.managed.last_used = time.monotonic()
        raise last or GatewayError("no attempt made")  # unreachable: max_attempts >= 1

    async def open_with_keepalive(self, req: Any, backend: str, send: Send, reply: Reply) -> Response:
        """Open the upstream request; if its headers take longer than the keepalive interval (an
        Ollama cold load, a saturated FastChat worker), start the SSE response and send comments
        while waiting, so proxies and clients keep the connection."""
        return await await_with_keepalives(self.gw.upstream.open(req, backend), send, self.gw.stream_keepalive,
                                           lambda: start_sse(send, reply, None))

    async def respond(self, resp: Response, req: Any, dep: Deployment, model: str,
                      send: Send, t0: float, watch: DisconnectWatch, reply: Reply) -> tuple[int, str]:
        b = dep.backend
        adapter = b.adapter
        m = self.gw.metrics
        ok = False
        try:
            # A pass-through stream is SSE; a translated one is whatever the native protocol uses
            # (Ollama NDJSON, FastChat NUL-delimited JSON), so only the request decides there.
            if not reply.committed and (not req.stream or (
                    req.passthrough and not (resp.header(b"content-type") or b"").startswith(b"text/event-stream"))):
                with map_transport_errors(b.name):
                    raw_answer = await resp.read()
                reply.read_at = time.perf_counter()
                with map_transport_errors(b.name):
                    data = adapter.translate_body(self.endpoint, raw_answer, resp.headers, req)
                if b'"usage"' in data:
                    doc = loads_or_none(data)
                    extract = self.native_usage or adapter.extract_usage
                    usage = extract(doc) if type(doc) is dict else None
                    if usage is not None:
                        m.observe_usage(model, b.name, *usage)
                        reply.usage = usage
                watch.finished = True
                await send_json(send, resp.status, data,
                                [(b"x-llm-gateway-backend", b.name.encode()), *reply.head], reply.limits)
                ok = True
                return resp.status, b.name
            source = resp.iter_chunks()
            if not req.passthrough:
                source = adapter.translate_stream(self.endpoint, source, req)
            first = b""
            if adapter.peek_first_event:
                # Still before the first byte to the client: an in-band failure here can be retried.
                with map_transport_errors(b.name):
                    first = await peek_first_event(source)
                err = adapter.first_event_error(first)
                if err is not None:
                    raise err
            if reply.committed:  # by keepalive comments: name the backend that answers in one more
                await send({"type": "http.response.body", "body": b": backend %s\n\n" % b.name.encode(),
                            "more_body": True})
            else:
                await start_sse(send, reply, b.name)
            tap = self.native_tap() if self.native_tap is not None else StreamTap(
                req.strip_usage, adapter.usage_markers, adapter.extract_usage)
            failure: GatewayError | None = None
            try:
                with map_transport_errors(b.name):
                    # Pass-through: the raw answer can hand events to the client from its read callback.
                    direct = req.passthrough
                    await relay_events(source, send, tap, adapter.stream_rewriter(req), first,
                                       self.gw.stream_keepalive, upstream=resp if direct else None,
                                       transport=client_transport(send) if direct else None)
            except GatewayError as err:
                failure = err
                log.warning("stream from %s failed after the first byte (request id %s): %s", b.name,
                            reply.rid.decode(), err.message)
            ended = time.perf_counter()
            tail = stream_end(tap, failure)
            watch.finished = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            ok = failure is None and tap.done
            if tail or tap.error:
                m.observe_truncated(b.name)
            if tap.first_at:
                m.observe_ttft(model, b.name, tap.first_at - t0)
                if ok:  # a cut stream's pace is not the backend's
                    m.observe_tpot(model, b.name, tap.first_at, ended, tap.completion_tokens)
            m.observe_usage(model, b.name, tap.prompt_tokens, tap.completion_tokens)
            if tap.prompt_tokens or tap.completion_tokens:  # else no usage report: the estimate stays charged
                reply.usage = (tap.prompt_tokens, tap.completion_tokens)
            return 200, b.name
        finally:
            # release() returns a fully read connection to the pool; close() aborts one we
            # abandon mid-body, which is what tells the backend to stop generating.
            if ok:
                resp.release()
            else:
                resp.close()

