"""The lease keeper: a request that outlives a concurrency lease's TTL keeps its slot, because the gatekeeper's
keeper (started with the gateway, when some key's limits include concurrency) extends the leases held.
Both in-process stores; a short TTL stands for the 300 s one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import gateway.auth.enforce as enforce
from gateway.auth.limits_memory import MemoryLimitStore
from gateway.auth.limits_native import NativeLimitStore
from gateway.errors import GatewayError
from gateway.runtime import Gateway
from gateway.settings import GatewaySettings
from tests.native import require_native

TTL = 0.3
BODY = {"model": "m", "max_tokens": 1}


def gateway(monkeypatch: pytest.MonkeyPatch, native: bool, limits: dict[str, int]) -> Gateway:
    if native:
        require_native()

    class ShortNative(NativeLimitStore):
        def __init__(self, **kw: Any) -> None:
            super().__init__(lease_ttl=TTL, **kw)

    class ShortMemory(MemoryLimitStore):
        def __init__(self, **kw: Any) -> None:
            super().__init__(lease_ttl=TTL, **kw)

    monkeypatch.setattr(enforce, "LEASE_TTL", TTL)
    monkeypatch.setattr(enforce, "NativeLimitStore", ShortNative)
    monkeypatch.setattr(enforce, "MemoryLimitStore", ShortMemory)
    return Gateway(GatewaySettings(auth={"keys": [{"name": "alice", "key": "sk-alice-0123456789abcdefghij",
                                                   "limits": limits}]},
                                   state={"native_limits": native}))


def admit(gw: Gateway, rid: bytes) -> Any:
    """One admission the way proxy.py makes it; None when refused."""
    gk = gw.gatekeeper
    ident = gw.keys.identify(b"Bearer sk-alice-0123456789abcdefghij")
    assert gk is not None and ident is not None
    if gk.c_admit is not None:
        adm = gk.c_admit(ident.plan, BODY, 30, rid)
        return None if type(adm) is tuple else adm
    try:
        return gk.admit_now(ident, BODY, 30, rid)
    except GatewayError as err:
        assert err.status == 429
        return None


@pytest.mark.parametrize("native", [True, False], ids=["c-store", "python-store"])
def test_a_held_lease_outlives_its_ttl_while_the_keeper_runs(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    async def run() -> None:
        gw = gateway(monkeypatch, native, {"concurrency": 1})
        gk = gw.gatekeeper
        assert gk is not None and gk.leased and (gk.c_admit is not None) == native
        gk.start()
        first = admit(gw, b"1")
        assert first is not None and admit(gw, b"2") is None
        await asyncio.sleep(TTL * 4)  # four TTLs: held only if the keeper extended it
        assert admit(gw, b"3") is None
        gk.done_now(first, 0) if gk.c_finish is None else gk.c_finish(first, 0, True, True)
        assert admit(gw, b"4") is not None
        await gk.close()
    asyncio.run(run())


@pytest.mark.parametrize("native", [True, False], ids=["c-store", "python-store"])
def test_without_the_keeper_the_lease_expires(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """The check above can fail: with no keeper the same held request loses its slot after the TTL (a replica
    that died must not hold it forever)."""
    async def run() -> None:
        gw = gateway(monkeypatch, native, {"concurrency": 1})
        assert admit(gw, b"1") is not None and admit(gw, b"2") is None
        await asyncio.sleep(TTL * 4)
        assert admit(gw, b"3") is not None
        await gw.gatekeeper.close()  # type: ignore[union-attr]
    asyncio.run(run())


def test_no_keeper_without_a_concurrency_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> None:
        gw = gateway(monkeypatch, False, {"rpm": 5})
        gk = gw.gatekeeper
        assert gk is not None and not gk.leased
        gk.start()
        assert gk._keeper is None
        await gk.close()
    asyncio.run(run())
