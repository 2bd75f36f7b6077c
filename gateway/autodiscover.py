"""Zero-config start: find inference servers on this machine's default ports, recognise each kind.

Each kind is recognised by something only it answers (backends.md), never by the port alone:
ports are shared (vLLM, RWKV-Runner and FastChat's API server all default to 8000).
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from adapters.base import FetchResult
from gateway.settings import BackendSettings

log = logging.getLogger("gateway.autodiscover")
RESCAN_SECONDS = 30.0
PROBE_TIMEOUT = 1.5


async def _get(gw_fetch, url: str) -> FetchResult | None:  # type: ignore[no-untyped-def]
    try:
        return await gw_fetch("GET", url, timeout=PROBE_TIMEOUT)
    except (ConnectionError, TimeoutError):
        return None


def _json(res: FetchResult | None) -> object:
    if res is None or res.status != 200:
        return None
    try:
        return orjson.loads(res.body)
    except orjson.JSONDecodeError:
        return None


async def fingerprint(fetch, url: str) -> tuple[str, str] | None:  # type: ignore[no-untyped-def]
    """(kind, evidence) for the server at url; None when nothing (recognisable) answers."""
    models = await _get(fetch, url + "/v1/models")
    root = await _get(fetch, url + "/")
    if models is None and root is None:
        return None
    test = await _get(fetch, url + "/test_connection")
    if test is not None and test.status == 200 and test.body.strip() == b'"success"':
        return "fastchat", "GET /test_connection answers \"success\" (FastChat controller)"
    if root is not None and root.status == 200 and root.body.startswith(b"Ollama is running"):
        return "ollama", "GET / answers 'Ollama is running'"
    root_doc = _json(root)
    if root_doc == {"Hello": "World!"}:
        return "rwkv-runner", 'GET / answers {"Hello":"World!"}'
    info = _json(await _get(fetch, url + "/info"))
    if isinstance(info, dict) and "max_total_tokens" in info and "model_id" in info:
        return "tgi", f"GET /info describes TGI serving {info['model_id']}"
    if models is not None and models.status == 503 and b"Loading model" in models.body:
        return "llamacpp", "every route answers 503 'Loading model' (llama-server loading)"
    props = _json(await _get(fetch, url + "/props"))
    if isinstance(props, dict) and ("default_generation_settings" in props or "total_slots" in props):
        return "llamacpp", "GET /props describes llama-server slots"
    doc = _json(models)
    owners = set()
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        owners = {c.get("owned_by") for c in doc["data"] if isinstance(c, dict)}
    version = _json(await _get(fetch, url + "/version"))
    if "vllm" in owners or (isinstance(version, dict) and "version" in version and len(version) == 1):
        return "vllm", "GET /v1/models cards are owned_by vllm" if "vllm" in owners else "GET /version"
    if "llamacpp" in owners:
        return "llamacpp", "GET /v1/models cards are owned_by llamacpp"
    if "fastchat" in owners:  # its API server: a plain OpenAI-compatible upstream
        return "openai", "GET /v1/models cards are owned_by fastchat (FastChat's openai_api_server)"
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        return "openai", "GET /v1/models answers in OpenAI's shape"
    return None


class Autodiscovery:
    """Scans the configured ports at start-up and again every 30 s for ports still empty."""

    def __init__(self, gw, monitor) -> None:  # type: ignore[no-untyped-def]
        self.gw = gw
        self.monitor = monitor
        s = gw.settings.autodiscover
        self.host = s.host
        self.ports = list(s.ports)
        self.task: asyncio.Task[None] | None = None
        self.told_empty = False

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    async def scan(self) -> int:
        taken = {b.url for b in self.gw.backends.values()}
        todo = [p for p in self.ports if self.url(p) not in taken]
        found = await asyncio.gather(*(fingerprint(self.gw.upstream.probe_fetch, self.url(p)) for p in todo))
        added = 0
        for port, hit in zip(todo, found):
            if hit is None:
                log.debug("nothing recognisable at %s", self.url(port))  # why a port stays empty
                continue
            kind, evidence = hit
            name = f"{kind}-{port}"
            log.info("found %s at %s (%s)", kind, self.url(port), evidence)
            rt = self.gw.add_backend(BackendSettings(name=name, kind=kind, url=self.url(port)))
            await self.monitor.probe(rt)
            self.monitor.watch(rt)
            added += 1
        if not self.gw.backends and not self.told_empty:
            self.told_empty = True
            log.warning(
                "no inference server found on %s ports %s. Start one there, or describe your backends "
                "in a YAML file and run: llm-gateway serve --config gateway.yaml (see README, "
                "'Configuration'); still scanning every %.0f s.",
                self.host, ", ".join(map(str, self.ports)), RESCAN_SECONDS)
        return added

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop(), name="autodiscover")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(RESCAN_SECONDS)
            try:
                await self.scan()
            except Exception:  # keep scanning whatever one round hit
                log.exception("autodiscovery scan failed")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
