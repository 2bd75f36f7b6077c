"""A FastChat controller and model workers, in the test process, that record every request.

For tests of what the gateway contacts (not of FastChat itself: tests/test_fastchat_gateway.py runs
the real one). Each server is a real HTTP/1.1 server on a loopback address in a thread. The
controller hands out whatever worker address a test gives it per model, as
fastchat/serve/controller.py's /get_worker_address would; a worker answers the routes the gateway
uses (/worker_get_status, /worker_get_conv_template, /model_details, /count_token, /worker_generate).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[dict[str, Any]], Any]
# fastchat.conversation's ADD_COLON_SINGLE style (sep_style 1), as /worker_get_conv_template sends it.
CONV = {"name": "fake", "system_template": "{system_message}", "system_message": "", "roles": ["USER", "ASSISTANT"],
        "messages": [], "offset": 0, "sep_style": 1, "sep": "\n", "sep2": None, "stop_str": None,
        "stop_token_ids": None}


class FakeServer:
    def __init__(self, host: str, routes: dict[tuple[str, str], Route]) -> None:
        self.requests: list[tuple[str, str]] = []  # (method, raw path with query) of every request
        self.bodies: list[tuple[str, Any]] = []  # (path, parsed JSON body) of every request
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw or b"{}")
                with server.lock:
                    server.requests.append((self.command, self.path))
                    server.bodies.append((self.path, body))
                route = routes.get((self.command, self.path))
                status, doc = (200, route(body)) if route else (404, {"detail": "Not Found"})
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve  # noqa: N815 (http.server's naming)

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for _, p in self.requests if p == path)

    def sent(self, path: str) -> list[Any]:
        """The JSON bodies received on `path`, oldest first."""
        with self.lock:
            return [b for p, b in self.bodies if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def controller(host: str, addresses: dict[str, str]) -> FakeServer:
    """A controller listing `addresses`' models, each handed out with its (unchecked) address."""
    return FakeServer(host, {
        ("GET", "/test_connection"): lambda _: "success",
        ("POST", "/list_models"): lambda _: {"models": list(addresses)},
        ("POST", "/get_worker_address"): lambda body: {"address": addresses.get(body.get("model"), "")},
        # the sum over its registered workers' own status (each says speed 1; FC controller.py)
        ("POST", "/worker_get_status"): lambda _: {"model_names": sorted(addresses), "speed": len(set(
            addresses.values())), "queue_length": 0},
    })


def worker(host: str, model: str, text: str) -> FakeServer:
    """A model worker serving `model`; every generation answers `text`."""
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    return FakeServer(host, {
        ("POST", "/worker_get_status"): lambda _: {"model_names": [model], "speed": 1, "queue_length": 0},
        ("POST", "/worker_get_conv_template"): lambda _: {"conv": CONV},
        ("POST", "/model_details"): lambda _: {"context_length": 2048},
        ("POST", "/count_token"): lambda _: {"count": 5, "error_code": 0},
        ("POST", "/worker_generate"): lambda _: {"text": text, "error_code": 0, "usage": usage,
                                                 "finish_reason": "stop"},
    })
