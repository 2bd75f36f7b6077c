"""CORS in a real browser (Debian's chromium, headless): a page on one origin calls the gateway on another with
`fetch`, an Authorization header and a JSON body, so the browser sends its own preflight first and reads the
answer only if the gateway's CORS headers allow it (README "`cors`"). A page on an origin not in
`cors.allow_origins` never gets its request sent: the browser stops at the preflight."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends.availability import unavailable
from tests.procs import Spawner, free_port

KEY = "browser-client-key-0123456789"

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>cors</title></head><body><pre id="out">pending</pre>
<script>
const GW = %(gateway)s, KEY = %(key)s;
async function run() {
  const body = {model: "model-a", messages: [{role: "user", content: "hi"}]};
  const headers = {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"};
  const r = await fetch(GW + "/v1/chat/completions", {method: "POST", headers, body: JSON.stringify(body)});
  const doc = await r.json();
  const s = await fetch(GW + "/v1/chat/completions", {method: "POST", headers,
                                                       body: JSON.stringify({...body, stream: true})});
  const reader = s.body.getReader(), dec = new TextDecoder();
  let text = "";
  for (;;) { const {done, value} = await reader.read(); if (done) break; text += dec.decode(value); }
  const denied = await fetch(GW + "/v1/chat/completions", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  return {status: r.status, content: doc.choices[0].message.content, rid: r.headers.get("x-request-id"),
          stream_status: s.status, stream_done: text.includes("data: [DONE]"),
          denied_status: denied.status, denied_code: (await denied.json()).error.code};
}
run().then(v => { document.getElementById("out").textContent = "RESULT " + JSON.stringify(v); },
           e => { document.getElementById("out").textContent = "FAILED " + e.name + ": " + e.message; });
</script></body></html>"""


class Pages:
    """A static page server on its own port: each port is its own origin (http://127.0.0.1:<port>)."""

    def __init__(self) -> None:
        self.html = ""
        pages = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                body = pages.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        unavailable("chromium", "not installed (.ci/run installs Debian's chromium)")
    return exe  # type: ignore[return-value]


def page_result(exe: str, url: str, profile: Path) -> str:
    """The page's #out text once its script settled, from the DOM chromium dumps. Still "pending" means
    chromium dumped before the script ended (its virtual-time budget ran out on a loaded machine): asked
    again, at most three times in all; a result or a failure of the script is final."""
    for _ in range(3):
        text = _dump(exe, url, profile)
        if text != "pending":
            break
    return text


def _dump(exe: str, url: str, profile: Path) -> str:
    r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    start = r.stdout.find('<pre id="out">')
    assert start >= 0, f"no DOM from chromium (exit {r.returncode}): {r.stderr[-2000:]}"
    return r.stdout[start + len('<pre id="out">'):r.stdout.find("</pre>", start)]


@pytest.fixture(scope="module")
def setup(module_spawn: Spawner) -> Iterator[dict[str, Any]]:
    exe = chromium()
    allowed, other = Pages(), Pages()
    try:
        dbl = module_spawn.double("browser", "model-a")
        gw = module_spawn.gateway({"auth": {"keys": [{"name": "web", "key": KEY}]},
                                   "cors": {"allow_origins": [allowed.origin]},
                                   "backends": [{"name": "dbl", "kind": "openai", "url": dbl.url}]})
        allowed.html = other.html = PAGE % {"gateway": json.dumps(gw.url), "key": json.dumps(KEY)}
        yield {"exe": exe, "gw": gw, "dbl": dbl, "allowed": allowed, "other": other}
    finally:
        allowed.close()
        other.close()


def test_a_page_on_an_allowed_origin_calls_the_gateway_with_a_key(setup: dict[str, Any], tmp_path: Path) -> None:
    before = len(setup["dbl"].requests())
    text = page_result(setup["exe"], setup["allowed"].origin + "/", tmp_path / "profile")
    assert text.startswith("RESULT "), text
    got = json.loads(text.removeprefix("RESULT "))
    assert got["status"] == 200 and got["content"] and got["rid"]  # x-request-id is exposed to the page
    assert got["stream_status"] == 200 and got["stream_done"] is True
    # an error is readable too: the page learns why (401, the OpenAI envelope), not an opaque network error
    assert (got["denied_status"], got["denied_code"]) == (401, "invalid_api_key")
    # the two keyed calls reached the backend: the browser sent each only after the gateway's preflight
    # answer allowed its origin, method and headers
    assert len(setup["dbl"].requests()) == before + 2
    assert KEY not in setup["gw"].proc.output()


def test_a_page_on_another_origin_is_stopped_by_the_browser(setup: dict[str, Any], tmp_path: Path) -> None:
    before = len(setup["dbl"].requests())
    text = page_result(setup["exe"], setup["other"].origin + "/", tmp_path / "profile")
    assert text.startswith("FAILED TypeError"), text  # fetch's network error: the preflight was not allowed
    assert len(setup["dbl"].requests()) == before  # the request itself was never sent
