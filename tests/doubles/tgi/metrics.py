"""/metrics text: metrics-exporter-prometheus 0.15 rendering of the State's counters and gauges."""

from __future__ import annotations

from .state import State


HELP = {
    "tgi_request_count": "Total number of requests",
    "tgi_request_success": "Number of successful requests",
    "tgi_queue_size": "Current queue size",
    "tgi_batch_current_size": "Current batch size",
    "tgi_batch_current_max_tokens": "Maximum tokens for the current batch",
}


def render_metrics(st: State) -> str:
    """metrics-exporter-prometheus 0.15 render(): counters, then gauges; HELP only for described names
    (TGI describes "tgi_batch_total_tokens", not the tgi_batch_max_total_tokens it sets)."""
    out: list[str] = []
    by_name: dict[str, list[tuple[tuple, int]]] = {}
    for (name, labels), v in st.counters.items():
        by_name.setdefault(name, []).append((labels, v))
    for name, rows in by_name.items():
        if name in HELP:
            out.append(f"# HELP {name} {HELP[name]}")
        out.append(f"# TYPE {name} counter")
        for labels, v in rows:
            lab = "{" + ",".join(f'{k}="{val}"' for k, val in labels) + "}" if labels else ""
            out.append(f"{name}{lab} {v}")
        out.append("")
    for name, v in st.gauges.items():
        if name in HELP:
            out.append(f"# HELP {name} {HELP[name]}")
        out.append(f"# TYPE {name} gauge")
        out.append(f"{name} {int(v) if float(v).is_integer() else v}")  # Rust f64 Display: 3.0 -> "3"
        out.append("")
    return "\n".join(out) + ("\n" if out else "")
