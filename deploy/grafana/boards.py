"""The dashboards' panels, as data: dataclasses for boards, rows, panels and queries, the PromQL helpers, and
the four boards (overview, one model, one backend, the team endpoint's keys). deploy/grafana/generate.py turns
them into Grafana's JSON and the README's tables.

Habits the queries keep (where vLLM's and production-stack's dashboards go wrong, anchors-ops §4-§5):
counters always through rate(...[$__rate_interval]), never a lifetime sum/count average; quantiles by
histogram_quantile over summed bucket rates with `le` kept; SLO targets offered only at bucket bounds
(read from gateway/metrics.py by the generator), so "share under SLO" reads one bucket exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RI = "[$__rate_interval]"
P = "llm_gateway_"
TTFT, ITL, E2E = P + "time_to_first_token_seconds", P + "time_per_output_token_seconds", P + "request_duration_seconds"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    names: bool = False  # a stat showing its series' names (a state, a kind), not their values
    width: int = 12
    max: float | None = None


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    filters: tuple[str, ...]  # label variables (model, backend) chosen from label_values
    rows: tuple[Row, ...]
    slo: bool = False
    tags: tuple[str, ...] = field(default=("llm-gateway",))


# -- PromQL pieces ------------------------------------------------------------------------------
def sel(metric: str, matchers: str) -> str:
    return f"{metric}{{{matchers}}}" if matchers else metric


def rate(metric: str, by: str, matchers: str = "") -> str:
    return f"sum by ({by}) (rate({sel(metric, matchers)}{RI}))"


def quantiles(hist: str, by: str, matchers: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> tuple[Query, ...]:
    legend = " ".join("{{" + b.strip() + "}}" for b in by.split(","))
    return tuple(Query(f"histogram_quantile({q}, sum by ({by}, le) (rate({sel(hist + '_bucket', matchers)}{RI})))",
                       f"p{round(q * 100)} {legend}") for q in qs)


def share_under(hist: str, var: str, by: str, matchers: str = "") -> Query:
    """Share of observations at or under the SLO: the `le` bucket over the count, both as rates."""
    m = f'{matchers}, le="${var}"' if matchers else f'le="${var}"'
    return Query(f"{rate(hist + '_bucket', by, m)} / {rate(hist + '_count', by, matchers)}",
                 "{{" + by + "}}")


def error_ratio(by: str, matchers: str = "") -> Query:
    """5xx share; `or ... * 0` keeps a 0 line for series with no 5xx at all instead of no line."""
    five = f'{matchers}, status=~"5.."' if matchers else 'status=~"5.."'
    total = rate(P + "requests_total", by, matchers)
    return Query(f"({rate(P + 'requests_total', by, five)} or {total} * 0) / {total}", "{{" + by + "}}")


def q(expr: str, legend: str) -> tuple[Query, ...]:
    return (Query(expr, legend),)


# -- the dashboards ------------------------------------------------------------------------------
def overview() -> Board:
    traffic = Row("Traffic", (
        Panel("Requests/s by model", "Answered requests per second, every status.",
              q(rate(P + "requests_total", "model"), "{{model}}"), "reqps"),
        Panel("Error ratio by model (5xx)", "Share of answers with a 5xx status.", (error_ratio("model"),),
              "percentunit", max=1),
        Panel("Requests/s by status", "499 = the client went away; 429 = refused for load.",
              q(rate(P + "requests_total", "status"), "{{status}}"), "reqps"),
        Panel("Tokens/s by model", "Prompt and completion tokens per second from the backends' usage.",
              q(rate(P + "tokens_total", "model, kind"), "{{model}} {{kind}}"), "short"),
        Panel("Requests/s by backend kind", "Per engine kind (vLLM, llama.cpp, TGI, ...): the requests' backend "
              "joined with llm_gateway_backend_info.",
              q(f"sum by (kind) ({rate(P + 'requests_total', 'backend')} * on (backend) group_left (kind) "
                f"max by (backend, kind) ({P}backend_info))", "{{kind}}"), "reqps", width=24),
    ))
    latency = Row("Latency", (
        Panel("Time to first token by model", "Streams: request received to first content event sent.",
              quantiles(TTFT, "model"), "s"),
        Panel("Time per output token (ITL) by model", "Streams of 2+ tokens: mean gap between tokens.",
              quantiles(ITL, "model"), "s"),
        Panel("End-to-end latency by model", "Request received to last byte sent.", quantiles(E2E, "model"), "s"),
        Panel("Requests under TTFT SLO by model", "Share of streams whose first token came within $ttft_slo s.",
              (share_under(TTFT, "ttft_slo", "model"),), "percentunit", width=6, max=1),
        Panel("Requests under ITL SLO by model", "Share of streams whose time per output token was within "
              "$itl_slo s.", (share_under(ITL, "itl_slo", "model"),), "percentunit", width=6, max=1),
    ))
    backends = Row("Backends", (
        Panel("Backend states", "Each backend's state now (as the gateway's probes see it).",
              q(f"max by (backend, state) ({P}backend_state) == 1", "{{backend}}: {{state}}"), kind="stat",
              names=True, width=8),
        Panel("Backends by state", "How many backends are in each state.",
              q(f"sum by (state) (max by (backend, state) ({P}backend_state))", "{{state}}"), width=8),
        Panel("Ready deployments by model", "Deployments of each model that can serve now; 0 means its "
              "requests get 503 no_ready_deployment (unless a fallback serves them).",
              q(f"min by (model) ({P}model_ready_deployments)", "{{model}}"), width=8),
        Panel("In-flight requests by backend", "Requests the gateway is serving now, per backend.",
              q(f"sum by (backend) ({P}in_flight_requests)", "{{backend}}"), width=8),
        Panel("Engine queue by backend", "Requests waiting inside the engine and being generated, as the engine "
              "reports them (read while probing).",
              (Query(f"max by (backend) ({P}engine_requests_waiting)", "waiting {{backend}}"),
               Query(f"max by (backend) ({P}engine_requests_running)", "running {{backend}}"))),
        Panel("Engine KV cache usage", "KV cache (or slot) usage, 0..1, where the engine reports it.",
              q(f"max by (backend) ({P}engine_kv_cache_usage_ratio)", "{{backend}}"), "percentunit", max=1),
        Panel("Engine resident models", "Models loaded in each engine (Ollama, llama.cpp router, FastChat "
              "workers, a sleeping vLLM's 0).", q(f"max by (backend) ({P}engine_models_loaded)", "{{backend}}")),
        Panel("Engine model memory", "Memory each resident model takes, where the engine says (Ollama).",
              q(f"max by (backend, model) ({P}engine_model_memory_bytes)", "{{backend}} {{model}}"), "bytes"),
    ))
    reliability = Row("Reliability", (
        Panel("Retries and fallbacks by model", "Attempts retried on another deployment; requests passed on to "
              "a fallback model.", (Query(rate(P + "retries_total", "model"), "retry {{model}}"),
                                    Query(rate(P + "fallbacks_total", "model, fallback"),
                                          "fallback {{model}} -> {{fallback}}")), "reqps"),
        Panel("Truncated streams by backend", "Streams that ended without their end marker or failed after the "
              "first byte.", q(rate(P + "streams_truncated_total", "backend"), "{{backend}}"), "reqps"),
        Panel("429 rejections by backend and reason", "queue_full / queue_timeout: the gateway's limiter; "
              "backend: the backend itself refused.",
              q(rate(P + "rejections_total", "backend, reason"), "{{backend}} {{reason}}"), "reqps"),
        Panel("Upstream errors by backend and code", "Failed upstream attempts by the gateway's error code.",
              q(rate(P + "upstream_errors_total", "backend, code"), "{{backend}} {{code}}"), "reqps"),
    ))
    gateway = Row("Gateway", (
        Panel("Gateway overhead by endpoint", "The gateway's own time per request (limiter wait excluded): "
              "proof the gateway is not the slow part.", quantiles(P + "overhead_seconds", "endpoint", qs=(0.5, 0.99)),
              "s", width=8),
        Panel("Limiter queue wait by backend", "Time waiting for a slot of a backend's max_concurrency.",
              quantiles(P + "queue_wait_seconds", "backend", qs=(0.5, 0.99)), "s", width=8),
        Panel("Probe duration by backend", "One health probe of each backend.",
              quantiles(P + "probe_duration_seconds", "backend", qs=(0.5, 0.99)), "s", width=8),
    ))
    return Board("llm-gateway-overview", "LLM gateway / Overview", "Traffic, latency, backends and the gateway "
                 "itself, across every model and backend.", (), (traffic, latency, backends, reliability, gateway),
                 slo=True)


def per_model() -> Board:
    m = 'model="$model"'
    rows = (
        Row("Traffic", (
            Panel("Requests/s by status", "", q(rate(P + "requests_total", "status", m), "{{status}}"), "reqps"),
            Panel("Requests/s by backend", "Which deployments serve the model.",
                  q(rate(P + "requests_total", "backend", m), "{{backend}}"), "reqps"),
            Panel("Error ratio (5xx)", "", (error_ratio("model", m),), "percentunit", max=1),
            Panel("Tokens/s", "", q(rate(P + "tokens_total", "kind", m), "{{kind}}"), "short"),
        )),
        Row("Latency", (
            Panel("Time to first token", "", quantiles(TTFT, "model", m), "s", width=8),
            Panel("Time per output token (ITL)", "", quantiles(ITL, "model", m), "s", width=8),
            Panel("End-to-end latency by endpoint", "", quantiles(E2E, "endpoint", m), "s", width=8),
            Panel("TTFT p95 by backend", "One slow deployment stands out here.",
                  quantiles(TTFT, "backend", m, qs=(0.95,)), "s", width=8),
            Panel("Requests under TTFT SLO", "", (share_under(TTFT, "ttft_slo", "model", m),), "percentunit",
                  width=8, max=1),
            Panel("Requests under ITL SLO", "", (share_under(ITL, "itl_slo", "model", m),), "percentunit",
                  width=8, max=1),
        )),
        Row("Reliability", (
            Panel("Retries", "", q(rate(P + "retries_total", "model", m), "{{model}}"), "reqps"),
            Panel("Fallbacks", "", q(rate(P + "fallbacks_total", "fallback", m), "-> {{fallback}}"), "reqps"),
            Panel("Ready deployments", "Deployments of the model that can serve now (per gateway replica).",
                  q(f"{P}model_ready_deployments{{{m}}}", "{{instance}}"), "short"),
        )),
    )
    return Board("llm-gateway-model", "LLM gateway / Model", "One model: its traffic, latency against SLOs, and "
                 "the deployments that serve it.", ("model",), rows, slo=True)


def per_backend() -> Board:
    b = 'backend="$backend"'
    rows = (
        Row("State", (
            Panel("State", "", q(f"max by (state) ({P}backend_state{{{b}}}) == 1", "{{state}}"), kind="stat",
                  names=True, width=6),
            Panel("Kind", "", q(f"max by (kind) ({P}backend_info{{{b}}})", "{{kind}}"), kind="stat", names=True,
                  width=4),
            Panel("Models served", "", q(f"max({P}backend_models{{{b}}})", "models"), kind="stat", width=5),
            Panel("Resident models", "As the engine reports.", q(f"max({P}engine_models_loaded{{{b}}})", "resident"),
                  kind="stat", width=5),
            Panel("In flight", "", q(f"sum({P}in_flight_requests{{{b}}})", "in flight"), kind="stat", width=4),
        )),
        Row("Load", (
            Panel("Engine queue", "As the engine reports it.",
                  (Query(f"max({P}engine_requests_waiting{{{b}}})", "waiting"),
                   Query(f"max({P}engine_requests_running{{{b}}})", "running"),
                   Query(f"sum({P}in_flight_requests{{{b}}})", "in flight at the gateway")), width=8),
            Panel("Engine KV cache usage", "", q(f"max({P}engine_kv_cache_usage_ratio{{{b}}})", "kv cache"),
                  "percentunit", width=8, max=1),
            Panel("Limiter queue wait", "", quantiles(P + "queue_wait_seconds", "backend", b, qs=(0.5, 0.99)), "s",
                  width=8),
        )),
        Row("Traffic and latency", (
            Panel("Requests/s by model and status", "",
                  q(rate(P + "requests_total", "model, status", b), "{{model}} {{status}}"), "reqps"),
            Panel("Tokens/s by model", "", q(rate(P + "tokens_total", "model, kind", b), "{{model}} {{kind}}")),
            Panel("Time to first token by model", "", quantiles(TTFT, "model", b, qs=(0.5, 0.95)), "s"),
            Panel("Time per output token by model", "", quantiles(ITL, "model", b, qs=(0.5, 0.95)), "s"),
        )),
        Row("Failures", (
            Panel("Upstream errors by code", "", q(rate(P + "upstream_errors_total", "code", b), "{{code}}"),
                  "reqps", width=8),
            Panel("429 rejections by reason", "", q(rate(P + "rejections_total", "reason", b), "{{reason}}"),
                  "reqps", width=8),
            Panel("Truncated streams", "", q(rate(P + "streams_truncated_total", "backend", b), "truncated"),
                  "reqps", width=8),
            Panel("Probe duration", "", quantiles(P + "probe_duration_seconds", "backend", b, qs=(0.5, 0.99)), "s"),
        )),
    )
    return Board("llm-gateway-backend", "LLM gateway / Backend", "One backend: state, engine load, traffic and "
                 "failures.", ("backend",), rows)


def keys() -> Board:
    """The team endpoint (README "Team keys"): who uses what, who is held back, and the shared state's cost."""
    kr = P + "key_requests_total"
    five = rate(kr, "key", 'status="5xx"')
    rows = (
        Row("Keys", (
            Panel("Requests/s by key", "Requests per key name (names from auth.keys; flat keys as api_keys[i]).",
                  q(rate(kr, "key"), "{{key}}"), "reqps"),
            Panel("Error ratio by key (5xx)", "Share of a key's answers with a 5xx status.",
                  (Query(f'({five} or {rate(kr, "key")} * 0) / {rate(kr, "key")}',
                         "{{key}}"),), "percentunit", max=1),
            Panel("Tokens/s by key", "Prompt and completion tokens per second, from the backends' usage reports.",
                  q(rate(P + "key_tokens_total", "key, kind"), "{{key}} {{kind}}")),
            Panel("Requests/s by key and status class", "", q(rate(kr, "key, status"), "{{key}} {{status}}"),
                  "reqps"),
        )),
        Row("Limits", (
            Panel("Refused by a limit, by key and limit", "429s from a key's or its team's rpm, tpm, concurrency "
                  "or token quota (503 limits_unavailable: the shared state is down and the gateway fails closed).",
                  q(rate(P + "key_limited_total", "key, limit"), "{{key}} {{limit}}"), "reqps"),
            Panel("Refused share by key", "Limited requests over all of the key's requests.",
                  (Query(f'sum by (key) (rate({P}key_limited_total{RI})) / ({rate(kr, "key")} '
                         f'+ sum by (key) (rate({P}key_limited_total{RI})))', "{{key}}"),), "percentunit", max=1),
        )),
        Row("Shared state (Redis)", (
            Panel("Round trips/s by component", "Round trips to Redis: limits (at most one per request) and usage.",
                  q(rate(P + "state_round_trips_total", "component"), "{{component}}"), "short", width=8),
            Panel("Calls per round trip", "Script calls batched into each round trip (a finish rides with the "
                  "next acquire).", q(f'{rate(P + "state_calls_total", "component")} / '
                                       f'{rate(P + "state_round_trips_total", "component")}', "{{component}}"),
                  "short", width=8),
            Panel("State failures/s by component", "Calls to Redis that failed; state.redis_failure decides "
                  "whether requests are admitted meanwhile.",
                  q(f'{rate(P + "state_failures_total", "component")} or '
                    f'{rate(P + "state_round_trips_total", "component")} * 0', "{{component}}"), "short", width=8),
        )),
    )
    return Board("llm-gateway-keys", "LLM gateway / Keys", "The team endpoint: requests, tokens and errors per "
                 "key, requests refused by limits, and the shared state's round trips.", (), rows)


BOARDS = (overview, per_model, per_backend, keys)
