"""The server's state: the loaded model, loading a model file, the one-generation-at-a-time lock and its queue."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any


class Model:
    def __init__(self, path: str) -> None:
        self.path = path
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.kind = "llama" if path.endswith(".gguf") else "rwkv"  # TextLlama (llama.cpp) or TextRWKV
        self.albatross = False  # AlbatrossRWKV: batched, no global lock (set by the load's strategy)

    @property
    def is_rwkv(self) -> bool:  # utils/llama.py is_rwkv_model
        return self.kind == "rwkv" or "rwkv" in self.name.lower()


class State:
    def __init__(self, a: argparse.Namespace) -> None:
        self.args = a
        self.status = 0
        self.model: Model | None = None
        self.deploy = False
        self.config: dict[str, Any] | None = None  # global_var.Model_Config
        self.locked = False  # routes/completion.py completion_lock
        self.release = asyncio.Event()
        self.requests: list[dict] = []
        self.reset_counters()
        if a.preload:
            self.model = Model(a.preload)
            self.config = self.model_defaults()
            self.status = 3

    def reset_counters(self) -> None:
        self.in_flight = self.max_in_flight = 0
        self.waiting = self.max_waiting = 0
        self.cancelled = self.completed = self.failed = 0
        self.pings = self.exit_calls = self.switch_calls = 0
        self.generations: list[dict] = []
        self.seq = 0

    def model_defaults(self) -> dict[str, Any]:
        if self.model is not None and self.model.kind == "llama":  # utils/llama.py TextLlama
            return {"max_tokens": 500, "temperature": 1.0, "top_p": 0.3, "presence_penalty": 0.0,
                    "frequency_penalty": 1.0, "penalty_decay": None, "top_k": 40, "global_penalty": None,
                    "state": None}
        return {"max_tokens": 500, "temperature": 1.0, "top_p": 0.3, "presence_penalty": 0.0,  # TextRWKV
                "frequency_penalty": 1.0, "penalty_decay": 0.996, "top_k": 0, "global_penalty": False,
                "state": ""}


def get_model_path(model_path: str) -> str:
    """utils/rwkv.py get_model_path (the double's own directory stands for backend-python/)."""
    if os.path.isabs(model_path):
        return model_path
    cwd = Path(os.path.abspath(os.getcwd()))
    for parent in (cwd, cwd.parent):
        for full in (parent / model_path, parent / "build" / "bin" / model_path):
            if os.path.isfile(full):
                return str(full)
    return model_path


def is_albatross_strategy(strategy: str) -> bool:
    """albatross_engine/config.py is_albatross_strategy: the strategy's first word."""
    words = strategy.strip().lower().split(maxsplit=1)
    return bool(words) and words[0] in ("albatross", "chirrup")


def load_model(path: str) -> Model:
    """What RWKV()/Llama() do first with the file; raises the same exceptions for a bad path."""
    resolved = get_model_path(path)
    if resolved.endswith(".gguf"):
        if not os.path.exists(resolved):  # llama_cpp.Llama.__init__
            raise ValueError(f"Model path does not exist: {resolved}")
    else:
        name = resolved if resolved.endswith(".pth") else resolved + ".pth"  # rwkv_pip RWKV.__init__
        with open(name, "rb"):  # torch.load -> FileNotFoundError / IsADirectoryError
            pass
    return Model(resolved)


async def acquire_lock(st: State) -> None:
    """`while completion_lock.locked(): await asyncio.sleep(0.1)` -- unbounded, no FIFO."""
    if st.locked:
        st.waiting += 1
        st.max_waiting = max(st.max_waiting, st.waiting)
        try:
            while st.locked:
                await asyncio.sleep(0.1)
        finally:
            st.waiting -= 1
    st.locked = True
