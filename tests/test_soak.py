"""The short soak (tests/soak.py; the long one is bench/soak.py): ~25 s of mixed traffic with a backend
restarted half-way, then the gateway's memory, fds, upstream pool and in-flight gauge are back where they
were and every request got an answer or a clean error."""

from __future__ import annotations

from tests import soak
from tests.procs import Spawner


def test_soak_mixed_traffic_leaves_nothing_behind(spawn: Spawner) -> None:
    r = soak.soak(spawn, seconds=20, warmup=5, workers=8)
    assert soak.check(r) == [], soak.report(r)
