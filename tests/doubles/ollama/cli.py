"""Argument parsing and main (python -m tests.doubles.ollama_server)."""

from __future__ import annotations

import argparse

from aiohttp import web

from .app import make_app


def main() -> None:
    p = argparse.ArgumentParser(description="Ollama test double")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default="ollama", help="appears in the default answer text")
    p.add_argument("--models", default="llama3.2", help="installed chat models, comma separated ('' = none)")
    p.add_argument("--embed-models", default="", help="installed embedding-only models")
    p.add_argument("--thinking-models", default="", help="models (of --models) with the thinking capability")
    p.add_argument("--vision-models", default="", help="models (of --models) with the vision capability")
    p.add_argument("--loaded", default="", help="models resident at start (as after a preload)")
    p.add_argument("--load-seconds", type=float, default=0.0, help="time a cold load takes")
    p.add_argument("--max-queue", type=int, default=512, help="OLLAMA_MAX_QUEUE")
    p.add_argument("--num-parallel", type=int, default=1, help="OLLAMA_NUM_PARALLEL (slots per model)")
    p.add_argument("--max-loaded", type=int, default=3, help="OLLAMA_MAX_LOADED_MODELS (0 = unlimited)")
    p.add_argument("--keep-alive", default="5m", help="OLLAMA_KEEP_ALIVE")
    p.add_argument("--context-length", type=int, default=4096, help="default num_ctx of a load")
    p.add_argument("--host-guard", action="store_true", help="reject non-local Host headers with 403")
    p.add_argument("--version", default="0.33.0")
    a = p.parse_args()
    web.run_app(make_app(a), host=a.host, port=a.port, print=None, access_log=None, handler_cancellation=True)
