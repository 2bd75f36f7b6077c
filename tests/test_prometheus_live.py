"""Every dashboard query and every alert rule, evaluated by a real Prometheus (Debian's package) that
scrapes a real gateway every second while it serves traffic through doubles of several backend kinds
(vLLM, TGI, Ollama, a generic OpenAI server) and a real llama-server: retries, a fallback, truncated
streams, 429s from a limited backend, a backend gone down and a model left with no ready deployment.
A query that returns nothing, or only NaN, fails: a renamed metric or a wrong label cannot silently
blank a panel. The alert expressions must return the label sets the traffic was made to trip."""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.backends.availability import unavailable
from tests.backends_under_test import BackendUnderTest
from tests.procs import ROOT, Gateway, Proc, Spawner, free_port

pytestmark = pytest.mark.llamacpp  # the real llama-server is one of the backends
BOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
PROM_DIR = ROOT / "deploy" / "prometheus"
CHOSEN = {"model": "chat-a", "backend": "star"}  # the drill-downs' variables, as a viewer would pick them
MESSAGES = [{"role": "user", "content": "hi"}]
# Team keys (the Keys board): all traffic as alice (team research), and bob held to 2 requests a minute; the
# limits and usage live in a real redis-server (the shared-state panels).
ALICE, BOB = "sk-live-alice-0123456789abcdef", "sk-live-bob-0123456789abcdef"
AS_ALICE = {"authorization": f"Bearer {ALICE}"}


class Stack:
    def __init__(self, gw: Gateway, prom: str, doomed: Proc, started: float) -> None:
        self.gw, self.prom, self.doomed, self.started = gw, prom, doomed, started

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(self.prom + "/api/v1/query", params={"query": expr}, timeout=30)
        doc = r.json()
        assert r.status_code == 200 and doc["status"] == "success", (expr, doc)
        return doc["data"]["result"]

    def rate_interval(self) -> str:
        """A window covering all the traffic (seconds long here; on a dashboard Grafana makes it at least four
        scrape intervals), so every series that saw traffic has a rate to show."""
        return f"{max(15, math.ceil(time.time() - self.started) + 5)}s"


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def chat(gw: Gateway, model: str, stream: bool = False, key: str = ALICE, **x_double: object) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 8, "stream": stream}
    if x_double:
        body["x_double"] = x_double
    return httpx.post(gw.v1 + "/chat/completions", json=body, timeout=60, headers={"authorization": f"Bearer {key}"})


def scrape(gw: Gateway) -> str:
    return httpx.get(gw.url + "/metrics", timeout=10).text


def start_prometheus(spawn: Spawner, tmp: Path, gw: Gateway, engine_url: str) -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        unavailable("prometheus", "install Debian's `prometheus` package (.ci/run does)")
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())  # the shipped config, pointed here
    cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    cfg["rule_files"] = [str(PROM_DIR / f) for f in cfg["rule_files"]]
    targets = {"llm-gateway": gw.url, "vllm": engine_url}  # vLLM's /metrics read beside the gateway's probes
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]].removeprefix("http://")]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    p = spawn.proc([exe, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}"], "prometheus")
    url = f"http://127.0.0.1:{port}"
    p.wait_http(url + "/-/ready", timeout=60)
    wait_for(lambda: httpx.get(url + "/-/ready").status_code == 200, "prometheus ready")
    return url


@pytest.fixture(scope="module")
def stack(module_spawn: Spawner, backend_llamacpp: BackendUnderTest, redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Stack:
    sp = module_spawn
    star = sp.double("star", "chat-a,star-only", "--max-num-seqs", "4")  # the limited backend with engine gauges
    peer = sp.double("peer", "chat-a,slow")
    doomed = sp.double("doomed", "lonely")
    tgi = sp.start_double("tgi_server", "/health", "--model-id", "meta-llama/Llama-3.1-8B-Instruct",
                          "--max-input-tokens", "1000", "--max-total-tokens", "2048", name="tgi")
    ollama = sp.start_double("ollama_server", "/api/version", "--models", "llama3.2", "--loaded", "llama3.2",
                             name="ollama")
    gw = sp.gateway({
        "health": {"interval": 1, "not_ready_interval": 1},
        "upstream": {"max_attempts": 2, "stream_keepalive": 0},
        "routing": {"eject_after_errors": 1000},  # truncations and injected errors must not take star out
        "backends": [
            {"name": "star", "kind": "vllm", "url": star.url, "max_concurrency": 1, "max_queue": 1,
             "queue_timeout": 0.5},
            {"name": "peer", "kind": "vllm", "url": peer.url},
            {"name": "doomed", "kind": "openai", "url": doomed.url},
            {"name": "tgi", "kind": "tgi", "url": tgi.url},
            {"name": "ollama", "kind": "ollama", "url": ollama.url},
            {"name": "llama", "kind": "llamacpp", "url": backend_llamacpp.url},
        ],
        "models": [{"name": "chat-a", "backends": ["star", "peer"], "fallbacks": [backend_llamacpp.model]}],
        "auth": {"keys": [{"name": "alice", "key": ALICE, "team": "research"},
                          {"name": "bob", "key": BOB, "limits": {"rpm": 2}}],
                 "teams": [{"name": "research", "limits": {"rpm": 100000, "concurrency": 64}}]},
        "state": {"redis": redis_url},
    })
    prom = start_prometheus(sp, tmp_path_factory.mktemp("prometheus"), gw, star.url)
    wait_for(lambda: bool(httpx.get(prom + "/api/v1/query", params={"query": 'up{job="llm-gateway"} == 1'})
                          .json()["data"]["result"]), "prometheus scraping the gateway")
    started = time.time()
    # Twice, scrapes apart: a series is first seen with its first observations already counted, so
    # rate() sees only what comes after (as with any real traffic, which keeps coming).
    for _ in range(2):
        serve_traffic(gw, star)
        time.sleep(2.5)
    # a backend goes away: down, and its only model has no ready deployment (503, no backend)
    doomed.proc.stop()
    wait_for(lambda: 'llm_gateway_backend_state{backend="doomed",state="down"} 1.0' in scrape(gw), "doomed down")
    for i in range(6):  # over several scrapes (a new series' first count is not a rate)
        assert chat(gw, "lonely").status_code == 503
        time.sleep(0.5 * (i % 2))
    stack = Stack(gw, prom, doomed.proc, started)
    n = sum(float(s.split()[-1]) for s in scrape(gw).splitlines()
            if s.startswith('llm_gateway_requests_total{') and 'model="lonely"' in s)
    wait_for(lambda: bool(stack.query(f'sum(llm_gateway_requests_total{{model="lonely"}}) == {n}')),
             "prometheus has scraped the last requests")
    return stack


def serve_traffic(gw: Gateway, star: Any) -> None:
    models = ["chat-a", "star-only", "slow", "meta-llama/Llama-3.1-8B-Instruct", "llama3.2", "tiny-llama"]
    for model in models:  # plain and streamed answers everywhere (TTFT, ITL, tokens, E2E)
        if model == "slow":
            continue
        for stream in (False, True, True):
            r = chat(gw, model, stream)
            assert r.status_code == 200, (model, r.text)
    with ThreadPoolExecutor(4) as pool:  # slow first tokens: TTFT p95 over the alert's 2.5 s
        codes = list(pool.map(lambda _: chat(gw, "slow", True, first_delay=2.7).status_code, range(4)))
    assert codes == [200] * 4
    # retries: both deployments of chat-a answer 503, then the fallback model (the real llama-server) serves
    for _ in range(2):
        assert chat(gw, "chat-a", status=503).status_code == 200
    for _ in range(4):  # truncated streams from star
        with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=30, headers=AS_ALICE, json={
                "model": "star-only", "messages": MESSAGES, "stream": True,
                "x_double": {"truncate": True, "chunks": 6}}) as s:
            assert "error" in "".join(s.iter_lines())
    # 429s: star takes one request at a time and queues one; a held request fills it
    star.reset()  # a fresh release event: the held request waits again
    held = threading.Thread(target=lambda: chat(gw, "star-only", hold=True))
    held.start()
    wait_for(lambda: star.stats()["in_flight"] == 1, "the held request reached star")
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: chat(gw, "star-only").status_code, range(4)))
    star.release()
    held.join(30)
    assert codes.count(429) >= 3, codes
    # bob's limit: two a minute, the rest refused (a fresh window per call of this function: a minute apart
    # is not needed, the Keys board only needs some of each)
    bob = [chat(gw, "chat-a", key=BOB).status_code for _ in range(4)]
    assert bob.count(429) >= 2, bob
    text = scrape(gw)
    assert 'llm_gateway_key_limited_total{key="bob",limit="rpm"}' in text
    for reason in ("queue_full", "queue_timeout"):
        assert f'llm_gateway_rejections_total{{backend="star",reason="{reason}"}}' in text, reason


def substitute(expr: str, board: dict, stack: Stack) -> str:
    values = {v["name"]: v["current"]["value"] for v in board["templating"]["list"] if v["type"] == "custom"}
    values |= CHOSEN
    values["__rate_interval"] = stack.rate_interval()
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)


def test_prometheus_loaded_the_shipped_alert_rules(stack: Stack) -> None:
    groups = httpx.get(stack.prom + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    shipped = [r["alert"] for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
               for r in g["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(shipped)
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_the_drill_down_choices_are_offered_by_their_variables(stack: Stack) -> None:
    for path in BOARDS:
        board = json.loads(path.read_text())
        for v in board["templating"]["list"]:
            if v["type"] == "query":
                metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", v["query"]).groups()  # type: ignore
                r = httpx.get(f"{stack.prom}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=10)
                assert CHOSEN[label] in r.json()["data"], (path.name, v["name"], r.json()["data"])


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_every_panel_query_returns_data(stack: Stack, path: Path) -> None:
    board = json.loads(path.read_text())
    empty = []
    for panel in (p for p in board["panels"] if p["type"] != "row"):
        for target in panel["targets"]:
            expr = substitute(target["expr"], board, stack)
            result = stack.query(expr)
            values = [float(r["value"][1]) for r in result]
            if not any(not math.isnan(v) for v in values):
                empty.append(f"{panel['title']}: {expr} -> {result}")
    assert not empty, "\n".join(empty)


# Each alert's condition, with the traffic above: who must trip it, who must not.
EXPECTED = {
    "LLMBackendDown": ({"backend": "doomed"}, {"backend": "star"}),
    "LLMModelNoReadyDeployment": ({"model": "lonely"}, {"model": "chat-a"}),
    "LLMErrorRatioHigh": ({"model": "lonely"}, {"model": "tiny-llama"}),
    "LLMTimeToFirstTokenHigh": ({"model": "slow"}, {"model": "chat-a"}),
    "LLMStreamsTruncated": ({"backend": "star"}, {"backend": "peer"}),
    "LLMRequestsRejected": ({"backend": "star", "reason": "queue_full"}, {"backend": "peer"}),
}


def test_every_alert_expression_returns_data_for_what_tripped_it(stack: Stack) -> None:
    rules = {r["alert"]: r for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
             for r in g["rules"]}
    assert set(rules) == set(EXPECTED)
    for name, rule in rules.items():
        result = [r["metric"] for r in stack.query(rule["expr"])]
        tripped, spared = EXPECTED[name]
        assert any(tripped.items() <= m.items() for m in result), (name, result)
        assert not any(spared.items() <= m.items() for m in result), (name, result)


def test_prometheus_evaluates_the_alerts(stack: Stack) -> None:
    """The rules run in Prometheus itself: the one without `for:` fires, the others are pending."""
    def states() -> dict[str, set[str]]:
        alerts = httpx.get(stack.prom + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        out: dict[str, set[str]] = {}
        for a in alerts:
            out.setdefault(a["labels"]["alertname"], set()).add(a["state"])
        return out
    wait_for(lambda: set(states()) == set(EXPECTED), f"every alert active: {states()}", timeout=15)
    s = states()
    assert s["LLMStreamsTruncated"] == {"firing"}
    assert all(v <= {"pending", "firing"} for v in s.values()), s  # the others wait out their `for:`
