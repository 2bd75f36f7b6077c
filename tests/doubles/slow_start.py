"""A server that takes its time to become ready, for the supervisor's start-up tests (gateway/supervisor).

    python -m tests.doubles.slow_start --port P [--chatter S] [--answer-503 S] [--never-ready]
                                       [--record FILE] [--needs URL]

--chatter S: print a line every 0.2 s for S seconds before listening (progress by output);
--dots S: print a dot (no newline) every 0.2 s for S seconds before listening, as llama.cpp does while loading;
--answer-503 S: listen at once and answer 503 to everything for S seconds, printing nothing (progress by answers);
--never-ready: keep printing forever, never listen; --record FILE: append each POST's path and body to FILE;
--needs URL: exit 1 at once unless URL answers (the second process of a launch needs the first one up).
Its own request log is silenced: only the lines above count as output.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chatter", type=float, default=0.0)
    ap.add_argument("--dots", type=float, default=0.0)
    ap.add_argument("--answer-503", type=float, default=0.0)
    ap.add_argument("--never-ready", action="store_true")
    ap.add_argument("--record")
    ap.add_argument("--needs")
    a = ap.parse_args()
    if a.needs:
        try:
            urllib.request.urlopen(a.needs, timeout=2)
        except OSError as exc:
            print(f"slow_start: {a.needs} is not up: {exc}", flush=True)
            sys.exit(1)
    t0 = time.monotonic()
    while a.never_ready or time.monotonic() - t0 < a.chatter:
        print(f"still loading ({time.monotonic() - t0:.1f}s)", flush=True)
        time.sleep(0.2)
    while time.monotonic() - t0 < a.dots:
        print(".", end="", flush=True)
        time.sleep(0.2)
    ready_at = time.monotonic() + a.answer_503

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.command == "POST" and a.record:
                with open(a.record, "a") as f:
                    f.write(f"{self.path} {body.decode()}\n")
            code = 200 if time.monotonic() >= ready_at else 503
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(f"listening on {a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
