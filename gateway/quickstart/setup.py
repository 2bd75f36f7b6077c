"""Putting the quickstart together (`llm-gateway serve --quickstart`): when nothing is configured or found,
a launched llama.cpp backend is added to the settings, after saying what was chosen, where it lives and the
command the supervisor will run; `--print-config` prints it as a config file instead."""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from gateway.quickstart import QuickstartError, llama_build
from gateway.quickstart.binary import find_llama_server
from gateway.quickstart.download import fetch
from gateway.quickstart.models import CONTEXT, choose, sized_file, this_machine

BACKEND = "quickstart"
IDLE_TIMEOUT = 1800.0  # stopped after half an hour without a request; the next request starts it again


def say(message: str) -> None:
    print(f"[quickstart] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Plan:
    binary: Path
    model: Path
    alias: str
    gpus: list[int]
    port: int


def plan(given_model: str | None, given_binary: str | None) -> Plan:
    machine = this_machine()
    binary = find_llama_server(given_binary, say, machine.gpu)
    if machine.gpu_free is not None and binary == llama_build.installed():
        say("the GPU is not used: the llama-server built here is CPU only; for the GPU install the CUDA toolkit "
            "(so a CUDA build is made) or put a CUDA build of llama.cpp on PATH (or give it with --llama-server)")
        machine = replace(machine, gpu_free=None)  # the model is chosen for the CPU it will run on
    if given_model:
        path = Path(given_model).expanduser().resolve()
        if not path.is_file():
            raise QuickstartError(f"--model {given_model}: no such file",
                                  fix="give the path of a .gguf file, or leave --model out to download one")
        gpus, why = sized_file(str(path), machine)
        alias = path.stem.lower()
        say(f"model: {path} (given), served as {alias!r}; {why}")
    else:
        choice = choose(machine)
        say(f"model: {choice.model.alias} ({choice.model.repo}, {choice.model.filename}): {choice.why}")
        path, alias, gpus = fetch(choice.model.repo, choice.model.filename, say), choice.model.alias, choice.gpus
    return Plan(binary, path, alias, gpus, free_port())


def backend_entry(p: Plan) -> dict[str, Any]:
    return {"name": BACKEND, "kind": "llamacpp", "url": f"http://127.0.0.1:{p.port}",
            "launch": {"model": str(p.model), "binary": str(p.binary), "served_name": p.alias, "context": CONTEXT,
                       "slots": 1, "gpus": p.gpus, "start": "at_boot", "idle_timeout": IDLE_TIMEOUT}}


def config_text(p: Plan) -> str:
    return ("# The quickstart's backend as a config file: llm-gateway serve --config this.yaml\n"
            + yaml.safe_dump({"backends": [backend_entry(p)]}, sort_keys=False))


def apply(settings: Any, given_model: str | None, given_binary: str | None, print_config: bool) -> int | None:
    """Add the quickstart backend to `settings` (None: go on serving), or print its config (0), or say why
    it cannot (1). Nothing is added when backends are configured or an inference server is found."""
    from gateway.recipes.plan import build
    from gateway.settings import BackendSettings

    try:
        if settings.backends and not print_config:
            say("backends are configured; nothing to launch")
            return None
        if not print_config and settings.autodiscover_enabled():
            found = servers_found(settings.autodiscover.host, settings.autodiscover.ports)
            if found:
                say(f"found {', '.join(found)}: serving that instead of launching a backend")
                return None
        p = plan(given_model, given_binary)
    except QuickstartError as exc:
        say(f"cannot start: {exc}")
        return 1
    if print_config:
        print(config_text(p), end="")
        return 0
    backend = BackendSettings.model_validate(backend_entry(p))
    settings.backends.append(backend)
    assert backend.launch is not None
    argv = build("llamacpp", backend.launch.params(BACKEND, backend.url, "host")).plans[0].argv
    say(f"launching: {' '.join(argv)}")
    say(f"the model is served as {p.alias!r}; its config file: llm-gateway serve --quickstart --print-config"
        + (f" --model {given_model}" if given_model else ""))
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def servers_found(host: str, ports: list[int]) -> list[str]:
    """The inference servers autodiscovery would find on `ports` ("kind at url")."""
    from adapters.base import FetchResult
    from gateway.autodiscover import fingerprint

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy

    def get(url: str, timeout: float) -> FetchResult:
        try:
            with opener.open(url, timeout=timeout) as r:
                return FetchResult(r.status, r.read(1 << 20), dict(r.headers))
        except urllib.error.HTTPError as e:
            return FetchResult(e.code, e.read(1 << 20), dict(e.headers))
        except (OSError, ValueError) as e:  # refused, timed out, not HTTP
            raise ConnectionError(str(e)) from None

    async def fetch_(method: str, url: str, timeout: float = 1.5, **_: Any) -> FetchResult:
        return await asyncio.to_thread(get, url, timeout)

    async def scan() -> list[str]:
        urls = [f"http://{host}:{port}" for port in ports]
        hits = await asyncio.gather(*(fingerprint(fetch_, u) for u in urls))
        return [f"{hit[0]} at {u}" for u, hit in zip(urls, hits) if hit is not None]

    return asyncio.run(scan())
