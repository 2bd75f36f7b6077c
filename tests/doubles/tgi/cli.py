"""Command line: TGI launcher-like arguments, the load delay, and serving the app."""

from __future__ import annotations

import argparse
import time

from aiohttp import web

from .app import make_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="TGI 3.3.x test double")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hostname", default="127.0.0.1")
    p.add_argument("--model-id", default="bigscience/bloom-560m")
    p.add_argument("--max-concurrent-requests", type=int, default=128)
    p.add_argument("--max-best-of", type=int, default=2)
    p.add_argument("--max-stop-sequences", type=int, default=4)
    p.add_argument("--max-top-n-tokens", type=int, default=5)
    p.add_argument("--max-input-tokens", type=int, default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--max-client-batch-size", type=int, default=4)
    p.add_argument("--max-batch-total-tokens", type=int, default=16384)
    p.add_argument("--payload-limit", type=int, default=2_000_000)
    p.add_argument("--api-key", default=None)
    p.add_argument("--load-delay", type=float, default=0.0, help="seconds before the port is bound")
    p.add_argument("--version", default="3.3.6-dev0")
    p.add_argument(
        "--docker-label", default=None, help="DOCKER_LABEL baked in the image (unset/'native' = none)"
    )
    p.add_argument("--sha", default=None, help="VERGEN_GIT_SHA of the build (null when unset)")
    p.add_argument("--model-sha", default=None)
    p.add_argument("--pipeline-tag", default="text-generation", help="Hub pipeline tag ('' = none)")
    p.add_argument("--compute-type", default="gpu+optimized", help="COMPUTE_TYPE env of TGI")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds per generated token")
    p.add_argument("--keep-alive", type=float, default=15.0, help="SSE keep-alive interval (0 = off)")
    p.add_argument(
        "--legacy-sse", action="store_true", help="`data:` without a space (TGI <= 2.0.x, axum 0.6)"
    )
    p.add_argument("--no-openai-completions", action="store_true",
                   help="no /v1/completions route (TGI releases before the OpenAI completions API)")
    a = p.parse_args(argv)
    if a.max_total_tokens is None:
        a.max_total_tokens = a.max_input_tokens + 1 if a.max_input_tokens is not None else 4096
    if a.max_input_tokens is None:
        a.max_input_tokens = a.max_total_tokens - 1
    if a.max_input_tokens >= a.max_total_tokens:
        p.error(
            f"`max_input_tokens`({a.max_input_tokens}) must be < `max_total_tokens`({a.max_total_tokens})"
        )
    return a


def main() -> None:
    a = parse_args()
    if a.load_delay > 0:  # the launcher starts the webserver only after the shards are ready
        print(f"tgi double: loading {a.model_id} for {a.load_delay}s (port {a.port} closed)", flush=True)
        time.sleep(a.load_delay)
    print(f"tgi double: serving {a.model_id} on {a.hostname}:{a.port}", flush=True)
    web.run_app(
        make_app(a), host=a.hostname, port=a.port, print=None, access_log=None, handler_cancellation=True
    )
