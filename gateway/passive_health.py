"""Passive health: failures seen on real requests take a backend (or one of its models) out.

A refused connection takes the backend out at once (the dispatcher in gateway/api/proxy.py does that);
answers that failed are counted here, so that one client's poison request cannot eject a backend (S6).
"""

from __future__ import annotations

import logging

from gateway.backends import BackendRuntime
from gateway.runtime import Gateway

log = logging.getLogger("gateway.proxy")  # its lines belong to the request path's log


class PassiveHealth:
    """Passive ejection counts only failures that are the backend's (S6): 502/504 answers, and 500s
    (any 5xx but 501 "not implemented" and 503 "busy/loading", which a live server says) and
    timeouts of *distinct* requests. A 500 or a timeout may be the request's fault (malformed
    input, a huge generation): the same body failing again, resent by a retrying client, counts
    once. A refused connection takes the backend out at once (the dispatcher does that)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.seen: dict[str, set[int]] = {}  # per backend: fingerprints counted in the current run

    def failure(self, b: BackendRuntime, fingerprint: int | None, what: str, model: str) -> None:
        """Count one failure; `fingerprint` None counts always, else once per run per request body.

        On a backend serving several models (Ollama, a llama.cpp router) an answer that failed is
        that model's failure (one model out of memory, the others fine): the run is counted per
        model and ejects only that deployment; a refused connection still takes the backend out."""
        per_model = len(b.served) > 1
        key = f"{b.name}\0{model}" if per_model else b.name
        run = b.model_errors.get(model, 0) if per_model else b.errors_in_row
        seen = self.seen.get(key)
        if seen is None or run == 0:  # a new run (a success or an ejection ended the last)
            seen = self.seen[key] = set()
        if fingerprint is not None:
            if fingerprint in seen:
                return
            seen.add(fingerprint)
        run += 1
        if not per_model:
            b.errors_in_row = run
            if run >= self.gw.eject_after:
                self.gw.mark_failed(b, f"{run} server errors in a row (last {what})")
            return
        b.model_errors[model] = run
        if run >= self.gw.eject_after:
            b.model_errors[model] = 0
            b.ejected[model] = f"{run} server errors in a row (last {what})"
            log.warning("backend %s: model %s taken out after %d server errors in a row (last %s); "
                        "its other models keep serving", b.name, model, run, what)
            self.gw.publish_readiness()
