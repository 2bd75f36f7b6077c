"""`llm-gateway serve --quickstart`: a streamed answer on a machine with no inference server.

When no backend is configured or found, the gateway launches one local llama.cpp `llama-server` through its
own supervisor (gateway/supervisor) and recipe (deploy/recipes/llamacpp.yaml), with a small instruct GGUF
chosen by the sizing estimator for this machine (models.py), served under a friendly alias and stopped when
idle like any launched backend. The pieces come from where the user has them, else are fetched: the binary
(binary.py: a path given, PATH, the cache, else built from source by llama_build.py; with CUDA for the GPU
when NVML sees one and a toolkit is here, cuda.py) and the model (a file
given with --model, else the Hugging Face hub: download.py). Every step says what it does; every failure is
one `QuickstartError` with the fix, never a traceback (setup.py puts it together)."""

from __future__ import annotations


class QuickstartError(Exception):
    """A step that cannot go on: what happened, and what to do about it."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message, self.fix = message, fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message
