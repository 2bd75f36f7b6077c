"""`autodiscover.*` and the fingerprints of every kind, on running gateways.

Every server here listens on 127.0.0.2 (Linux routes all of 127.0.0.0/8 to loopback), so a
gateway that found them looked where `autodiscover.host` said, not at its 127.0.0.1 default.
Kinds are recognised by what only that server answers, never by its port: the ports are random.
(The 30 s rescan of empty ports is a constant, not a setting; a test of it would wait 30 s.)
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.procs import Spawner

HOST = "127.0.0.2"


def free_port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server(spawn: Spawner, name: str, argv: list[str], ready: str) -> int:
    """Starts a server on HOST at a free port (argv's `{port}`); returns the port once it answers."""
    port = free_port_on(HOST)
    p = spawn.proc([a.replace("{port}", str(port)) for a in argv], f"disc-{name}")
    p.wait_http(f"http://{HOST}:{port}{ready}", timeout=60)
    return port


def double(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"tests.doubles.{module}", "--port", "{port}", *args]


SERVERS = {  # expected kind, argv, ready path
    "tgi": ("tgi", double("tgi_server", "--hostname", HOST, "--model-id", "meta-llama/Llama-3.1-8B-Instruct"),
            "/health"),
    "ollama": ("ollama", double("ollama_server", "--host", HOST, "--models", "llama3.2"), "/api/version"),
    "rwkv": ("rwkv-runner", double("rwkv_server", "--host", HOST), "/status"),
    # owned_by is not vllm, but vLLM's GET /version answers
    "vllm-version": ("vllm", double("openai_server", "--host", HOST, "--owned-by", "acme", "--vllm-version",
                                    "0.33.0"), "/health"),
    # FastChat's openai_api_server: its cards say owned_by fastchat; served as a plain OpenAI upstream
    "fastchat-api": ("openai", double("openai_server", "--host", HOST, "--owned-by", "fastchat"), "/health"),
    # llama-server while it loads: every route answers 503 "Loading model"
    "llama-loading": ("llamacpp", double("openai_server", "--host", HOST, "--owned-by", "acme"), "/health"),
}


def real_llama_server(spawn: Spawner, tmp: Any) -> int | None:
    """A real llama-server (recognised by GET /props) when this machine has the binary built."""
    from tests.backends.llamacpp import LlamaServerUnavailable, ensure_llama_server, server_args, write_tiny_gguf
    try:
        binary = ensure_llama_server()
    except LlamaServerUnavailable:
        return None
    model = write_tiny_gguf(tmp / "disc-tiny.gguf")
    argv = server_args(binary, model, 0, ctx=128, parallel=1, extra=("--host", HOST, "--port", "{port}"))
    return server(spawn, "llama-server", argv, "/health")


@pytest.fixture(scope="module")
def found(module_spawn: Spawner) -> Iterator[dict[str, Any]]:
    with ThreadPoolExecutor(len(SERVERS) + 1) as pool:
        futs = {n: pool.submit(server, module_spawn, n, argv, ready) for n, (_, argv, ready) in SERVERS.items()}
        llama = pool.submit(real_llama_server, module_spawn, module_spawn.tmp)
    ports = {n: f.result() for n, f in futs.items()}
    httpx.post(f"http://{HOST}:{ports['llama-loading']}/_loading", params={"on": "1"}).raise_for_status()
    if llama.result() is not None:
        ports["llama-server"] = llama.result()
    empty = free_port_on(HOST)
    gw = module_spawn.gateway({
        "autodiscover": {"enabled": True, "host": HOST, "ports": [*ports.values(), empty]},
        # configured backends alone would switch discovery off; enabled: true scans anyway
        "backends": [{"name": "configured", "kind": "vllm", "url": "http://127.0.0.1:9"}]})
    yield {"gw": gw, "ports": ports, "empty": empty}


def test_every_kind_is_recognised_and_named_kind_port(found: dict[str, Any]) -> None:
    gw, ports = found["gw"], found["ports"]
    backends = {b["name"]: b for b in httpx.get(gw.url + "/admin/backends").json()["backends"]}
    expected = {f"{SERVERS[n][0]}-{p}": (SERVERS[n][0], f"http://{HOST}:{p}") for n, p in ports.items()
                if n in SERVERS}
    if "llama-server" in ports:
        expected[f"llamacpp-{ports['llama-server']}"] = ("llamacpp", f"http://{HOST}:{ports['llama-server']}")
    assert {n: (b["kind"], b["url"]) for n, b in backends.items() if n != "configured"} == expected
    assert "configured" in backends
    log = gw.proc.output()
    for kind, url in expected.values():
        assert f"found {kind} at {url}" in log
    assert f"{HOST}:{found['empty']}" not in str(backends)


def test_real_llama_server_is_recognised_by_its_props(found: dict[str, Any]) -> None:
    if "llama-server" not in found["ports"]:
        pytest.skip("REAL llama-server NOT TESTED here: the binary is not built on this machine")
    port = found["ports"]["llama-server"]
    assert f"found llamacpp at http://{HOST}:{port} (GET /props describes llama-server slots)" \
        in found["gw"].proc.output()


def test_discovered_backends_serve(found: dict[str, Any]) -> None:
    gw, ports = found["gw"], found["ports"]
    r = httpx.post(gw.v1 + "/chat/completions", timeout=30,
                   json={"model": "llama3.2:latest", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["x-llm-gateway-backend"] == f"ollama-{ports['ollama']}"


def test_enabled_false_does_not_scan(module_spawn: Spawner, found: dict[str, Any]) -> None:
    gw = module_spawn.gateway({"autodiscover": {"enabled": False, "host": HOST,
                                                "ports": list(found["ports"].values())}})
    assert httpx.get(gw.url + "/admin/backends").json()["backends"] == []
    assert httpx.get(gw.url + "/readyz").status_code == 503
    assert "found " not in gw.proc.output()
