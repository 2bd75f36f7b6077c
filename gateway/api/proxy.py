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

from adapters.base import Endpoint
from gateway.api.asgi import (ClientGone, DisconnectWatch, Receive, Scope, Send, header, read_body,
                              send_error, send_json)
from gateway.api.client_writer import client_transport
from gateway.balancer import pick
from gateway.errors import GatewayError, InvalidRequest, Unauthorized
from gateway.http1 import Response
from gateway.jsonio import loads, loads_or_none
from gateway.protocol import routing_fields
from gateway.routing import Deployment, Route
from gateway.runtime import Gateway
from gateway.streaming import (DONE_EVENT, StreamTap, await_with_keepalives, peek_first_event, relay_events,
                               stream_end)
from gateway.upstream import map_transport_errors

log = logging.getLogger("gateway.proxy")

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
CLIENT_CLOSED = 499  # nginx's convention, for metrics only: nobody receives it


class Reply:
    """Whether this request's SSE response has started (headers and keepalive comments only: no
    answer byte yet, so a failed attempt may still be retried, but a final error must now be an
    error event instead of an HTTP status)."""

    __slots__ = ("committed",)

    def __init__(self) -> None:
        self.committed = False


async def start_sse(send: Send, reply: Reply, backend: str | None) -> None:
    """Start the SSE response once. `backend` None: started before any backend answered (keepalive
    comments while waiting), so the header cannot say who serves; a retry may still go elsewhere."""
    if not reply.committed:
        reply.committed = True
        headers = SSE_HEADERS if backend is None else [*SSE_HEADERS, (b"x-llm-gateway-backend", backend.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})


class ProxyEndpoint:
    def __init__(self, gw: Gateway, endpoint: Endpoint) -> None:
        self.gw = gw
        self.endpoint = endpoint
        self.label = endpoint.value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gw
        t0 = time.perf_counter()
        model = backend = ""
        status = 500
        watch: DisconnectWatch | None = None
        reply = Reply()
        try:
            if gw.api_keys and not gw.authorized(header(scope, b"authorization") or header(scope, b"x-api-key")):
                raise Unauthorized("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.")
            raw = await read_body(scope, receive, gw.max_body)
            try:
                body = loads(raw)
            except ValueError:
                raise InvalidRequest("We could not parse the JSON body of your request: it is not valid JSON.",
                                     code="invalid_json") from None
            name, stream, needs = routing_fields(self.endpoint, body)
            route = gw.table.resolve(name)
            model = route.name
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
            if reply.committed:  # the SSE response had started (keepalives only): end it with the error
                await send({"type": "http.response.body", "body": err.sse_event() + DONE_EVENT, "more_body": False})
            else:
                await send_error(send, err)
        except ClientGone:
            status = CLIENT_CLOSED
        except asyncio.CancelledError:
            if watch is None or not watch.gone:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            status = CLIENT_CLOSED
        except Exception:  # a gateway bug: log it, answer in the envelope if headers are not out yet
            log.exception("unhandled error serving %s", self.label)
            try:
                await send_error(send, GatewayError("The gateway hit an internal error; it has been logged."))
            except RuntimeError:
                pass
        finally:
            if watch is not None:
                watch.close()
            gw.metrics.observe_request(self.label, model, backend, status, time.perf_counter() - t0)

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
            log.info("model %s cannot serve (%s): falling back to %s", route.name, last.message, fallback.name)
            self.gw.metrics.observe_retry(route.name)
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
        for attempt in range(gw.max_attempts):
            try:
                dep = pick(route, needs, tried, session)
            except GatewayError:
                if last is not None:
                    raise last from None
                raise
            b = dep.backend
            adapter = b.adapter
            gauge = gw.metrics.in_flight_child(b.name)
            b.in_flight += 1
            gauge.inc()
            limiter = b.limiter
            acquired = False
            req = None
            try:
                if limiter is not None:
                    await limiter.acquire()  # 429 when its bounded queue is full or the wait too long
                    acquired = True
                # A fresh shallow copy per attempt: the adapter patches it, a retry must not see that.
                if adapter.needs_prepare:
                    req = await adapter.prepare(self.endpoint, dict(body), dep.upstream_model, stream,
                                                gw.upstream.fetch)
                else:
                    req = adapter.build_request(self.endpoint, dict(body), dep.upstream_model, stream)
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
                    if resp.status >= 500 and resp.status != 503:  # 503: loading/overload, said by a live server
                        b.errors_in_row += 1
                        if b.errors_in_row >= gw.eject_after:
                            gw.mark_failed(b, f"{b.errors_in_row} server errors in a row (last HTTP {resp.status})")
                    raise adapter.map_error(resp.status, data)
                result = await self.respond(resp, req, dep, route.name, send, t0, watch, reply)
                b.errors_in_row = 0
                return result
            except GatewayError as err:
                gw.metrics.observe_upstream_error(b.name, err.code)
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
                    data = adapter.translate_body(self.endpoint, await resp.read(), resp.headers, req)
                if b'"usage"' in data:
                    doc = loads_or_none(data)
                    usage = adapter.extract_usage(doc) if type(doc) is dict else None
                    if usage is not None:
                        m.observe_usage(model, b.name, *usage)
                watch.finished = True
                await send_json(send, resp.status, data, [(b"x-llm-gateway-backend", b.name.encode())])
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
            tap = StreamTap(req.strip_usage, adapter.usage_markers, adapter.extract_usage)
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
                log.warning("stream from %s failed after the first byte: %s", b.name, err.message)
            tail = stream_end(tap, failure)
            watch.finished = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            ok = failure is None and tap.done
            if tail or tap.error:
                m.observe_truncated(b.name)
            if tap.first_at:
                m.observe_ttft(model, b.name, tap.first_at - t0)
            m.observe_usage(model, b.name, tap.prompt_tokens, tap.completion_tokens)
            return 200, b.name
        finally:
            # release() returns a fully read connection to the pool; close() aborts one we
            # abandon mid-body, which is what tells the backend to stop generating.
            if ok:
                resp.release()
            else:
                resp.close()

