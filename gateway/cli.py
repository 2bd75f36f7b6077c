"""`llm-gateway`: serve, check a config, show backends' status."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway import __version__
from gateway.config_loader import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llm-gateway", description="One OpenAI-compatible endpoint in "
                                "front of llama.cpp, vLLM, TGI, FastChat, RWKV-Runner and Ollama.")
    p.add_argument("--version", action="version", version=f"llm-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", "-c", help="YAML config file (default: $GATEWAY_CONFIG; none: probe "
                   "this machine's default ports)")
    s.add_argument("--host", help="listen address (default: server.host, 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port (default: server.port, 4000)")
    q = s.add_argument_group("quickstart", "a local llama.cpp backend when nothing is configured or found")
    q.add_argument("--quickstart", action="store_true", help="launch llama-server with a small instruct model "
                   "(downloaded from the Hugging Face hub unless --model is given) when no backend is configured "
                   "or found")
    q.add_argument("--model", help="with --quickstart: serve this GGUF file instead of downloading one")
    q.add_argument("--llama-server", help="with --quickstart: this llama-server binary (default: PATH, the "
                   "cache, else built from source)")
    q.add_argument("--print-config", action="store_true", help="with --quickstart: print the backend it would "
                   "launch as a config file, and exit")
    c = sub.add_parser("check-config", help="validate a config file and print the routing table")
    c.add_argument("path")
    st = sub.add_parser("status", help="show a running gateway's backends: state, since, models, load")
    st.add_argument("--url", default="http://127.0.0.1:4000", help="the gateway's base URL")
    st.add_argument("--api-key", default=None, help="deprecated: other users can read it in the process list; "
                    "set $GATEWAY_ADMIN_KEY to an admin key instead")
    st.add_argument("--logs", metavar="BACKEND", help="print the last output lines of a backend the gateway runs")
    st.add_argument("--lines", type=int, default=50, help="with --logs: how many lines (default 50)")
    us = sub.add_parser("usage", help="usage per key x model x day from a running gateway (GET /admin/usage)")
    us.add_argument("--url", default="http://127.0.0.1:4000", help="the gateway's base URL")
    for flag in ("key", "team", "model"):
        us.add_argument(f"--{flag}", help=f"only this {flag}")
    us.add_argument("--since", help="first UTC day, YYYY-MM-DD")
    us.add_argument("--until", help="last UTC day, YYYY-MM-DD")
    sz = sub.add_parser("size", help="estimate GPU memory for a model: weights, KV cache, overhead, fits or not")
    from gateway.recipes.size_cli import add_arguments as add_size_arguments
    add_size_arguments(sz)
    rc = sub.add_parser("recipe", help="print how to launch a backend: shell command and compose service")
    from gateway.recipes.recipe_cli import add_arguments as add_recipe_arguments
    add_recipe_arguments(rc)
    cp = sub.add_parser("compose", help="render a compose file: the config's launched backends, the gateway, "
                        "Prometheus and Grafana")
    from gateway.recipes.compose_file import add_arguments as add_compose_arguments
    add_compose_arguments(cp)
    ks = sub.add_parser("keys", help="make keys for auth.keys (printed once; the config holds their hash)")
    from gateway.auth.keygen import add_arguments as add_keys_arguments
    add_keys_arguments(ks)
    args = p.parse_args(argv)
    try:
        if args.command == "size":
            from gateway.recipes.size_cli import run as run_size
            return run_size(args)
        if args.command == "recipe":
            from gateway.recipes.recipe_cli import run as run_recipe
            return run_recipe(args)
        if args.command == "compose":
            from gateway.recipes.compose_file import run as run_compose
            return run_compose(args)
        if args.command == "usage":
            from gateway.status import show_usage
            return show_usage(args.url, {"key": args.key, "team": args.team, "model": args.model,
                                         "start": args.since, "end": args.until})
        if args.command == "keys":
            from gateway.auth.keygen import run as run_keys
            return run_keys(args)
        if args.command == "serve":
            return serve(args)
        if args.command == "status":
            from gateway.status import show, show_logs
            if args.logs:
                return show_logs(args.url, args.logs, args.lines)
            return show(args.url, args.api_key)
        return check_config(args.path)
    except ConfigError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    settings = load_settings(args.config)
    if (args.model or args.llama_server or args.print_config) and not args.quickstart:
        print("llm-gateway serve: --model, --llama-server and --print-config go with --quickstart", file=sys.stderr)
        return 2
    if args.quickstart:
        from gateway.quickstart.setup import apply
        code = apply(settings, args.model, args.llama_server, args.print_config)
        if code is not None:
            return code
    if args.host:
        settings.server.host = args.host
    if args.port:
        settings.server.port = args.port
    level = settings.server.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gateway.auth.exposure import log_exposure
    log_exposure(settings, settings.server.host)
    from gateway.server_protocol import protocol_class, raise_fd_limit
    raise_fd_limit()
    app = create_app(settings)
    s = settings.server
    http = protocol_class(s.max_header_bytes, s.header_timeout, s.body_timeout)
    config = uvicorn.Config(app, host=settings.server.host, port=settings.server.port, loop="uvloop",
                            http=http, log_level=settings.server.log_level.lower(), access_log=False,
                            # Nothing reads the client address (scope["client"]): uvicorn's
                            # X-Forwarded-For middleware would be one more layer on every request.
                            proxy_headers=False, lifespan="on", timeout_graceful_shutdown=settings.server.drain_timeout)

    class DrainingServer(uvicorn.Server):
        """SIGTERM/SIGINT: /readyz turns 503 at once; uvicorn stops accepting and lets in-flight
        requests finish (streams too) for up to server.drain_timeout seconds, then exits."""

        def handle_exit(self, sig: int, frame: object) -> None:
            if not app.gateway.draining:
                app.gateway.draining = True
                logging.getLogger("gateway").warning(
                    "draining: %d request(s) in flight, up to %.0f s", sum(b.in_flight for b in
                                                                         app.gateway.backends.values()),
                    settings.server.drain_timeout)
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    DrainingServer(config).run()
    return 0


def check_config(path: str) -> int:
    from gateway.runtime import Gateway

    settings = load_settings(path)
    gw = Gateway(settings)  # builds adapters and the static routing table; no network
    print(f"{path}: OK")
    print(f"\nbackends ({len(gw.backends)}):")
    for b in gw.backends.values():
        extra = "" if b.discover else "  (discovery off)"
        print(f"  {b.name:<24} {b.kind:<12} {b.url}{extra}")
    print(f"\nmodels ({len(gw.table.routes)} configured):")
    for r in gw.table.routes:
        alias = f"  aliases: {', '.join(r.aliases)}" if r.aliases else ""
        print(f"  {r.name}{alias}")
        for d in r.deployments:
            up = d.upstream_model if d.explicit else f"(resolved at start-up by discovery; default {d.upstream_model})"
            print(f"    -> {d.backend.name:<22} upstream model: {up}  weight {d.weight:g}")
    a = settings.auth
    print(f"\nauth: {len(a.api_keys)} client key(s), {len(a.admin_keys)} admin key(s), {len(a.keys)} named key(s)"
          + ("" if a.api_keys or a.admin_keys or a.keys else "  (none: open; admin from loopback only)"))
    disc = [b.name for b in gw.backends.values() if b.discover]
    if disc:
        print(f"\nalso served: every other model reported by {', '.join(disc)}")
    if settings.autodiscover_enabled():
        ports = ", ".join(map(str, settings.autodiscover.ports))
        print(f"\nautodiscovery: probing {settings.autodiscover.host} ports {ports}")
    return 0
