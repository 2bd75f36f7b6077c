"""Virtualenvs for the heavy Python backends (vLLM CPU, FastChat), built once per machine.

Each lives under ~/.cache/llm-gateway/<name>/ (override the root with LLM_GATEWAY_CACHE_DIR), is
installed from a pinned lock with `--no-deps --only-binary :all:`, and is valid while its marker
holds the recipe (hash of the lock and the import check): a changed pin rebuilds it. A file lock
serialises builders; the marker is written last, so a half-built venv never counts as ready.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gateway.quickstart.llama_build import cache_root  # one cache root for every build

LOCAL_WHEELS = Path("/opt/wheels")  # where a CPU torch build that PyPI lacks may be found locally


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def recipe(lock: str, check: str) -> str:
    return hashlib.sha256((lock + check).encode()).hexdigest()[:16]


class VenvRecipe:
    """What one backend's venv is: its name, lock, import check, and how its failures read."""

    def __init__(self, name: str, lock: str, check: str, *, python: tuple[int, int],
                 unavailable: type[Exception], env: dict[str, str], hint: Callable[[str], str],
                 pip_check: bool = False, log_noise: str = "") -> None:
        self.name, self.lock, self.check, self.python = name, lock, check, python
        self.unavailable, self.env, self.hint = unavailable, env, hint
        self.pip_check, self.log_noise = pip_check, log_noise
        self.recipe = recipe(lock, check)

    @property
    def venv(self) -> Path:
        return cache_root() / self.name

    def base_python(self) -> str:
        if sys.version_info[:2] == self.python:
            return sys.executable
        name = "python%d.%d" % self.python
        found = shutil.which(name)
        if not found:
            raise self.unavailable(f"{self.name} needs {name} here (the local CPU torch wheel is "
                                   f"cp{self.python[0]}{self.python[1]}), and there is none on PATH")
        return found

    def run(self, args: list[str], log: Path, what: str, timeout: float) -> None:
        with open(log, "ab") as f:
            f.write(f"\n$ {' '.join(args)}\n".encode())
            f.flush()
            try:
                rc: int | str = subprocess.run(
                    args, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False,
                    env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", **self.env},
                ).returncode
            except subprocess.TimeoutExpired:
                rc = f"timeout after {timeout:.0f}s"
        if rc != 0:
            lines = log.read_text(errors="replace").splitlines()
            if self.log_noise:
                lines = [line for line in lines if self.log_noise not in line]
            tail = "\n".join(lines[-25:])
            hint = ""
            if "torch==" in tail and ("No matching distribution" in tail or "ResolutionImpossible" in tail):
                hint = "\n" + self.hint(str(LOCAL_WHEELS))
            raise self.unavailable(f"{what} failed ({rc}); full log: {log}\n{tail}{hint}")

    def ready(self) -> bool:
        marker = self.venv / ".llm-gateway-ready"
        return (marker.is_file() and marker.read_text().strip() == self.recipe
                and venv_python(self.venv).exists())

    def ensure(self, installing: str, importing: str) -> Path:
        """The virtualenv, built on first use (once per machine); returns its directory."""
        venv = self.venv
        if self.ready():
            return venv
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)       # another process may be building it: wait for it
            if self.ready():
                return venv
            shutil.rmtree(venv, ignore_errors=True)
            venv.mkdir(parents=True)
            log = root / f"{self.name}-build.log"
            log.write_text(f"building {venv} (recipe {self.recipe})\n")
            started = time.monotonic()
            python = str(venv_python(venv))
            try:
                self.run([self.base_python(), "-m", "venv", str(venv)], log, "creating the virtualenv", 120)
                lock_file = venv / "requirements.lock.txt"
                lock_file.write_text(self.lock.lstrip())
                pip = [python, "-m", "pip", "install", "--no-deps", "--only-binary", ":all:"]
                if LOCAL_WHEELS.is_dir():
                    pip += ["--find-links", str(LOCAL_WHEELS)]
                self.run(pip + ["-r", str(lock_file)], log, installing, 1800)
                if self.pip_check:
                    self.run([python, "-m", "pip", "check"], log, "checking the requirements", 120)
                self.run([python, "-c", self.check], log, importing, 300)
            except BaseException:
                shutil.rmtree(venv, ignore_errors=True)
                raise
            with open(log, "a") as f:
                f.write(f"built in {time.monotonic() - started:.0f}s\n")
            (venv / ".llm-gateway-ready").write_text(self.recipe + "\n")   # last: the venv is complete
        return venv
