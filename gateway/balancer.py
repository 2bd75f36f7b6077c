"""Choosing one deployment of a route: least outstanding requests, weighted, ready ones only."""

from __future__ import annotations

import hashlib
import math

from gateway.backends import NEED_NAMES, NEED_PARAM
from gateway.errors import CapabilityMissing, UpstreamUnavailable
from gateway.routing import Deployment, Route

# A deployment whose model is not resident is picked only when no warm one can take the request:
# its first token waits for a model load (seconds to minutes).
COLD_PENALTY = 1_000_000.0


def pick(route: Route, needs: int, exclude: tuple[Deployment, ...] = (), session: str | None = None) -> Deployment:
    """The serving deployment with the fewest in-flight requests per unit of weight, preferring
    deployments whose model is resident.

    Ties rotate (round robin) so an idle pool spreads sequential requests. Raises
    CapabilityMissing when no deployment of the route can serve this kind of request at all, and
    UpstreamUnavailable (503) when some could but none is serving now.
    """
    deps = route.deployments
    if session is not None and len(deps) > 1:
        sticky = _rendezvous(deps, needs, exclude, session)
        if sticky is not None:
            return sticky
    n = len(deps)
    start = route.rr
    route.rr = start + 1
    best: Deployment | None = None
    best_score = 0.0
    capable = False
    for i in range(n):
        d = deps[(start + i) % n]
        b = d.backend
        if b.capmask & needs != needs:
            continue
        capable = True
        if not b.serving or d in exclude or (b.ejected and d.upstream_model in b.ejected):
            continue
        score = (b.in_flight + 1) / d.weight + (COLD_PENALTY if d.cold else 0.0)
        if best is None or score < best_score:
            best, best_score = d, score
    if best is not None:
        return best
    if not capable:
        missing = needs & ~_union(route)
        what = ", ".join(v for k, v in NEED_NAMES.items() if missing & k) or "this request"
        param = next((v for k, v in NEED_PARAM.items() if missing & k), None)
        raise CapabilityMissing(f"The model '{route.name}' is not served by any backend that supports {what}.",
                                param=param)
    raise UpstreamUnavailable(f"No backend serving '{route.name}' is ready right now; try again shortly.",
                              code="no_ready_deployment", headers={"Retry-After": "2"})


def _union(route: Route) -> int:
    mask = 0
    for d in route.deployments:
        mask |= d.backend.capmask
    return mask


def _rendezvous(deps: tuple[Deployment, ...], needs: int, exclude: tuple[Deployment, ...],
                session: str) -> Deployment | None:
    """Weighted rendezvous hashing over the warm, serving deployments: the same session lands on
    the same one while it serves; when it stops, only its own sessions move."""
    best: Deployment | None = None
    best_score = -math.inf
    for d in deps:
        b = d.backend
        if b.capmask & needs != needs or not b.serving or d in exclude or d.cold or (
                b.ejected and d.upstream_model in b.ejected):
            continue
        h = int.from_bytes(hashlib.blake2b(f"{session}\0{b.name}".encode(), digest_size=8).digest(), "big")
        score = -d.weight / math.log((h + 1) / (2 ** 64 + 1))
        if score > best_score:
            best, best_score = d, score
    return best
