"""Reading a few gauges out of a backend's Prometheus exposition (for load figures)."""

from __future__ import annotations


def gauges(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of the samples of each named metric (over all label sets); absent names are omitted.

    Only what a probe needs: plain `name{labels} value` lines; comments and other metrics are
    skipped without being parsed.
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        for name in names:
            if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
                try:
                    value = float(line.rsplit(" ", 1)[1])
                except (IndexError, ValueError):
                    break
                out[name] = out.get(name, 0.0) + value
                break
    return out
