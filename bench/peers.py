"""Peer gateways the benchmark compares against: how each is installed (once, cached under
~/.cache/llm-gateway/bench/<name>-<version>) and started, pointed at the same fixed upstream."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CACHE = Path.home() / ".cache" / "llm-gateway" / "bench"


@dataclass
class Peer:
    version: str
    start: Callable[[Path, int, str, str], tuple[subprocess.Popen[bytes], str, dict[str, str]]]


PEERS: dict[str, Peer] = {}
