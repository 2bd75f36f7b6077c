"""The one shared upstream client, and the one place transport errors become GatewayErrors.

The client is gateway/http1.py (pooled keep-alive HTTP/1.1 on asyncio protocols + httptools),
chosen by measurement over aiohttp and httpx (README "Performance"). It is created in the app
lifespan and shared by every request. Health probes and discovery get a pool of their own: when
requests hold every request connection (many long streams), a probe must still reach a healthy
backend instead of timing out in the queue and marking it down.
"""

from __future__ import annotations

import asyncio

from adapters.base import FetchResult, UpstreamRequest
from gateway import http1
from gateway.errors import GatewayError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable


class Upstream:
    """Owns the connection pool. Safe to share between tasks of one event loop."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, total_timeout: float | None,
                 max_connections: int, first_byte_timeout: float | None = None, pool_timeout: float = 10.0,
                 max_response_bytes: int = 64 * 1024 * 1024, probe_connections: int = 64,
                 max_header_bytes: int = 64 * 1024) -> None:
        self.first_byte_timeout = first_byte_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self.max_response_bytes = max_response_bytes
        self.max_header_bytes = max_header_bytes
        self.probe_connections = probe_connections
        self._pool: http1.Pool | None = None
        self._probe_pool: http1.Pool | None = None

    async def start(self) -> None:
        self._pool = http1.Pool(connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                                max_connections=self.max_connections, total_timeout=self.total_timeout,
                                first_byte_timeout=self.first_byte_timeout, pool_timeout=self.pool_timeout,
                                max_response_bytes=self.max_response_bytes, max_header_bytes=self.max_header_bytes)
        # Probes are small and few: a separate budget, so requests cannot starve them.
        self._probe_pool = http1.Pool(connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                                      max_connections=self.probe_connections, max_idle_per_origin=4,
                                      pool_timeout=self.pool_timeout, max_response_bytes=self.max_response_bytes,
                                      max_header_bytes=self.max_header_bytes)

    async def close(self) -> None:
        for pool in (self._pool, self._probe_pool):
            if pool is not None:
                pool.close()
        self._pool = self._probe_pool = None

    @property
    def pool(self) -> http1.Pool:
        assert self._pool is not None, "Upstream.start() not called"
        return self._pool

    async def open(self, req: UpstreamRequest, backend: str) -> http1.Response:
        """Send a request; return the response with its body unread. Caller must release() it."""
        with map_transport_errors(backend):
            return await self.pool.request(req.method, req.url, req.headers, req.body)

    async def fetch(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                    body: bytes | None = None, timeout: float = 5.0) -> FetchResult:
        """Small whole-body request on the request pool (adapters.base.Fetch), e.g. an adapter's
        token count before a generation.

        Raises ConnectionError when nothing answers and TimeoutError on timeout, so adapters can
        tell "not listening" from "listening but unhappy" without knowing the client.
        """
        return await self._fetch(self.pool, method, url, headers, body, timeout)

    async def probe_fetch(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                          body: bytes | None = None, timeout: float = 5.0) -> FetchResult:
        """fetch() on the probes' own pool (health checks, discovery)."""
        assert self._probe_pool is not None, "Upstream.start() not called"
        return await self._fetch(self._probe_pool, method, url, headers, body, timeout)

    async def _fetch(self, pool: http1.Pool, method: str, url: str, headers: dict[str, str] | None,
                     body: bytes | None, timeout: float) -> FetchResult:
        try:
            async with asyncio.timeout(timeout):
                resp = await pool.request(method, url, headers or {}, body, read_timeout=timeout)
                try:
                    data = await resp.read()
                except BaseException:
                    resp.close()
                    raise
                resp.release()
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise TimeoutError(f"no answer within {timeout:g}s") from exc
        except http1.TransportError as exc:
            raise ConnectionError(str(exc)) from exc
        return FetchResult(resp.status, data, {k.decode("latin-1"): v.decode("latin-1") for k, v in resp.headers})


class _Mapper:
    """Context manager mapping the client's transport failures to GatewayErrors."""

    __slots__ = ("backend",)

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, (GatewayError, asyncio.CancelledError)):
            return False
        b = self.backend
        if isinstance(exc, http1.PoolTimeout):  # the gateway's own limit, not the backend's fault
            raise UpstreamUnavailable(f"the gateway has no free connection to backend {b} ({exc})", status=503,
                                      code="upstream_pool_exhausted", retryable=False) from exc
        if isinstance(exc, (http1.ReadTimeout, asyncio.TimeoutError, TimeoutError)):
            raise UpstreamTimeout(f"backend {b} did not answer in time ({exc})") from exc
        if isinstance(exc, http1.ConnectFailed):
            raise UpstreamUnavailable(f"backend {b} is unreachable ({exc})", status=502,
                                      code="upstream_connect_failed") from exc
        if isinstance(exc, http1.ConnectionClosed):
            raise UpstreamUnavailable(f"backend {b} closed the connection ({exc})", status=502,
                                      code="upstream_disconnected") from exc
        if isinstance(exc, (http1.ProtocolError, OSError)):
            raise UpstreamProtocolError(f"backend {b}: {exc}") from exc
        return False


def map_transport_errors(backend: str) -> _Mapper:
    return _Mapper(backend)
