"""Reading the config file and turning every way it can be wrong into one readable message."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.settings import GatewaySettings


class ConfigError(Exception):
    """A config problem, already phrased for the operator (key path + what is wrong)."""


def load_settings(path: str | os.PathLike[str] | None = None) -> GatewaySettings:
    """Load `path` (or $GATEWAY_CONFIG, or nothing: defaults + environment)."""
    path = path or os.environ.get("GATEWAY_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(Path(path))
    try:
        return GatewaySettings(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path) if path else "environment")) from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (backends:, models:, ...)")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors(include_url=False):
        loc = _loc(err["loc"])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (see README 'Configuration' for the valid keys)"
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return "\n".join(lines)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-plain"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out
