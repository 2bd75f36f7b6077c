"""The one shared upstream HTTP client, and the one place transport errors become GatewayErrors.

aiohttp rather than httpx: on this project's benchmark machine (one core, 64 concurrent requests
to a fast loopback upstream) httpx's AsyncClient made 646 req/s and aiohttp's ClientSession
14,480 req/s. The session is created in the app lifespan and shared by every request and probe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from adapters.base import FetchResult, UpstreamRequest
from gateway.errors import GatewayError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger("gateway.upstream")


class Upstream:
    """Owns the aiohttp session. Safe to share between tasks of one event loop."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, total_timeout: float | None,
                 max_connections: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout,
                                              sock_read=read_timeout)
        self._connector_args = {"limit": max_connections, "keepalive_timeout": 30.0, "ttl_dns_cache": 60}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(**self._connector_args),  # type: ignore[arg-type]
            timeout=self._timeout,
            # No Accept-Encoding: bodies must arrive as the bytes we pass through to the client.
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() not called"
        return self._session

    async def open(self, req: UpstreamRequest, backend: str) -> aiohttp.ClientResponse:
        """Send a request; return the response with its body unread. Caller must release() it."""
        with map_transport_errors(backend):
            return await self.session.request(req.method, req.url, data=req.body, headers=req.headers)

    async def fetch(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                    body: bytes | None = None, timeout: float = 5.0) -> FetchResult:
        """Small whole-body request for probes and discovery (adapters.base.Fetch).

        Raises ConnectionError when nothing answers and TimeoutError on timeout, so adapters can
        tell "not listening" from "listening but unhappy" without knowing aiohttp.
        """
        try:
            async with self.session.request(
                method, url, headers=headers, data=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                data = await resp.read()
                return FetchResult(resp.status, data, {k.lower(): v for k, v in resp.headers.items()})
        except asyncio.TimeoutError as exc:
            raise TimeoutError(f"no answer within {timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise ConnectionError(describe(exc)) from exc


def describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return str(exc) or type(exc).__name__


class _Mapper:
    """Context manager mapping aiohttp/asyncio transport failures to GatewayErrors."""

    __slots__ = ("backend",)

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, (GatewayError, asyncio.CancelledError)):
            return False
        b = self.backend
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            raise UpstreamTimeout(f"backend {b} did not answer in time") from exc
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise UpstreamUnavailable(f"backend {b} is unreachable ({describe(exc)})", status=502,
                                      code="upstream_connect_failed") from exc
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            raise UpstreamUnavailable(f"backend {b} closed the connection ({describe(exc)})", status=502,
                                      code="upstream_disconnected") from exc
        if isinstance(exc, aiohttp.ClientPayloadError):
            raise UpstreamProtocolError(f"backend {b} sent a broken body ({describe(exc)})") from exc
        if isinstance(exc, aiohttp.ClientError):
            raise UpstreamProtocolError(f"backend {b}: {describe(exc)}") from exc
        return False


def map_transport_errors(backend: str) -> _Mapper:
    return _Mapper(backend)


@asynccontextmanager
async def released(resp: aiohttp.ClientResponse) -> AsyncIterator[aiohttp.ClientResponse]:
    """Always give the connection back (or close it when the body was not fully read)."""
    try:
        yield resp
    finally:
        resp.release()
