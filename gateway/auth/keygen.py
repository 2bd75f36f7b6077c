"""`llm-gateway keys new NAME`: a fresh key, printed once, and the config entry that holds only its HMAC."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys

import yaml

from gateway.auth.keys import hash_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", required=True)
    n = sub.add_parser("new", help="make a key: print it once, and the auth.keys entry holding only its hash")
    n.add_argument("name", help="who it is for (letters, digits, . _ @ -): usage and limits are recorded by it")
    n.add_argument("--team", help="the team whose limits it shares")
    n.add_argument("--models", nargs="+", default=None, metavar="PATTERN",
                   help="models it may use: names or patterns (qwen*); default all")
    n.add_argument("--admin", action="store_true", help="may also use /admin/*")
    n.add_argument("--secret-env", default="GATEWAY_KEY_SECRET",
                   help="variable holding the gateway's key secret (auth.secret_env; default GATEWAY_KEY_SECRET)")


def run(args: argparse.Namespace) -> int:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$", args.name):
        return _fail(f"bad name {args.name!r}: letters, digits and . _ @ - (up to 64), starting with a letter or digit")
    secret = os.environ.get(args.secret_env)
    if not secret:
        return _fail(f"${args.secret_env} is not set: it holds the secret keys are hashed with, the same one the "
                     f"gateway reads (e.g. export {args.secret_env}=$(openssl rand -hex 32))")
    key = "sk-" + secrets.token_urlsafe(32)
    entry: dict[str, object] = {"name": args.name, "hash": hash_text(secret.encode(), key.encode())}
    if args.team:
        entry["team"] = args.team
    if args.models:
        entry["models"] = args.models
    if args.admin:
        entry["admin"] = True
    print(f"# The key for {args.name}, shown once (only its hash is kept):")
    print(key)
    print(f"# Add this to auth.keys in the gateway's config (the gateway needs the same ${args.secret_env}):")
    print(yaml.safe_dump([entry], sort_keys=False, width=200).rstrip())
    return 0


def _fail(message: str) -> int:
    print(f"llm-gateway keys: {message}", file=sys.stderr)
    return 2
