"""Model name -> pool of deployments. A pure function of the config and what backends serve.

The table is rebuilt (never mutated) whenever discovery changes what a backend serves; request
tasks read `Gateway.table` and keep the snapshot they got for the whole request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.backends import BackendRuntime
from gateway.errors import ModelNotFound
from gateway.settings import ModelSettings

log = logging.getLogger("gateway.routing")


@dataclass(frozen=True, slots=True)
class Deployment:
    backend: BackendRuntime
    upstream_model: str
    weight: float
    explicit: bool = True  # upstream name written in config (else resolved from discovery)
    cold: bool = False  # the backend reports this model not resident: its first request loads it


@dataclass(slots=True)
class Route:
    name: str
    aliases: tuple[str, ...]
    deployments: tuple[Deployment, ...]
    configured: bool  # from `models:` (else discovered)
    context_length: int | None = None
    fallbacks: tuple[str, ...] = ()
    rr: int = field(default=0)  # round-robin cursor for tie-breaking in the balancer


class RoutingTable:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self.by_name: dict[str, Route] = {}
        # Backends that match model names by a rule of their own (Ollama: `llama3.2` is `llama3.2:latest`,
        # in any case) give their adapter a `model_key`; a name with no exact route is looked up by it.
        # Only routes such a backend serves are keyed, so other kinds pay nothing, not even on a miss.
        self.by_key: dict[Callable[[str], str], dict[str, Route]] = {}
        for r in routes:
            for n in (r.name, *r.aliases):
                self.by_name[n] = r
            for key in {k for d in r.deployments if (k := getattr(d.backend.adapter, "model_key", None))}:
                keyed = self.by_key.setdefault(key, {})
                for n in (r.name, *r.aliases):
                    keyed.setdefault(key(n), r)

    def resolve(self, name: str) -> Route:
        route = self.by_name.get(name)
        if route is None:
            route = next((r for key, keyed in self.by_key.items() if (r := keyed.get(key(name)))), None)
        if route is None:
            raise ModelNotFound(f"The model '{name}' does not exist or is not served by this gateway. "
                                f"GET /v1/models lists the available models.", param="model")
        return route

    def describe(self) -> list[dict[str, object]]:
        return [
            {"model": r.name, "aliases": list(r.aliases), "source": "config" if r.configured else "discovered",
             "deployments": [{"backend": d.backend.name, "kind": d.backend.kind,
                              "upstream_model": d.upstream_model, "explicit": d.explicit, "weight": d.weight,
                              "cold": d.cold,
                              "state": d.backend.state.value} for d in r.deployments]}
            for r in self.routes
        ]


def build_table(models: Iterable[ModelSettings], backends: dict[str, BackendRuntime],
                *, discovery: bool = True) -> RoutingTable:
    routes: list[Route] = []
    public: set[str] = set()
    covered: set[tuple[str, str]] = set()  # (backend, upstream model) claimed by `models:`
    for m in models:
        names = (m.name, *m.aliases)
        deps = []
        for ref in m.backends:
            b = backends[ref.backend]
            upstream = ref.model or upstream_name(names, b)
            deps.append(Deployment(b, upstream, ref.weight or b.weight, ref.model is not None, _cold(b, upstream)))
            covered.add((b.name, upstream))
        routes.append(Route(m.name, tuple(m.aliases), tuple(deps), True, _ctx(deps), tuple(m.fallbacks)))
        public.update(names)
    if discovery:
        found: dict[str, list[Deployment]] = {}
        for b in backends.values():
            if not b.discover:
                continue
            for sm in b.served:
                if sm.id in public or (b.name, sm.id) in covered:
                    continue  # a configured model owns this name / this upstream model
                if sm.residency == "failed":
                    continue
                found.setdefault(sm.id, []).append(Deployment(b, sm.id, b.weight, True, sm.cold))
        for name, deps in found.items():
            routes.append(Route(name, (), tuple(deps), False, _ctx(deps)))
    return RoutingTable(routes)


def upstream_name(names: tuple[str, ...], b: BackendRuntime) -> str:
    """The upstream model for a `models:` entry that names a backend without `model:`.

    The public name or an alias if the backend serves it; else the backend's only model (e.g. a
    llama-server); else the public name itself (until discovery says more).
    """
    served = [m.id for m in b.served]
    for n in names:
        if n in served:
            return n
    if len(served) == 1:
        return served[0]
    return names[0]


def _cold(b: BackendRuntime, upstream: str) -> bool:
    return any(m.cold for m in b.served if m.id == upstream)


def _ctx(deps: list[Deployment]) -> int | None:
    ctxs = [m.context_length for d in deps for m in d.backend.served
            if m.id == d.upstream_model and m.context_length]
    return min(ctxs) if ctxs else None
