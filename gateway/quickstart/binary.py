"""Where the quickstart's `llama-server` comes from: the path given (`--llama-server`), PATH, the cache of an
earlier build, else a build from source (llama_build.py), its duration said before it starts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from gateway.quickstart import QuickstartError
from gateway.quickstart import llama_build


def find_llama_server(given: str | None, say: Callable[[str], None]) -> Path:
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise QuickstartError(f"--llama-server {given}: no executable file there",
                                  fix="give the path of a llama-server binary, or leave the option out")
        say(f"llama-server: {path} (given)")
        return path
    on_path = shutil.which("llama-server")
    if on_path:
        say(f"llama-server: {on_path} (on PATH)")
        return Path(on_path)
    cached = llama_build.installed()
    if cached is not None:
        say(f"llama-server: {cached} (built earlier)")
        return cached
    if missing := llama_build.missing_tools():  # say so now, not after the sdist download
        raise QuickstartError(
            f"no llama-server on PATH or in {llama_build.cache_root()}, and building one needs "
            f"{', '.join(missing)}, not found",
            fix="install llama.cpp (its releases, `brew install llama.cpp`) and put llama-server on PATH, or "
                "install a C++ toolchain and CMake so the gateway can build it (Debian/Ubuntu: sudo apt-get "
                "install cmake g++ make; macOS: xcode-select --install && brew install cmake)")
    say(f"llama-server: none on PATH or in the cache; building it from the llama.cpp sources in the "
        f"llama-cpp-python {llama_build.LLAMA_CPP_PYTHON_VERSION} sdist ({llama_build.BUILD_MINUTES}; "
        f"only once: later starts reuse it)")
    try:
        return llama_build.ensure_llama_server()
    except llama_build.LlamaServerUnavailable as exc:
        raise QuickstartError(f"building llama-server failed: {str(exc).splitlines()[0]}",
                              fix=exc.fix or "read the build log named above; or put a llama-server on PATH") from None
