"""Model names (types/model/name.go) and the installed-model catalogue: facts, templates, stops."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_HOST, DEFAULT_NS, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"


# ---------------------------------------------------------------------------------------------------
# Model names (types/model/name.go) and the installed-model catalogue
# ---------------------------------------------------------------------------------------------------

def _valid_part(kind: str, s: str) -> bool:
    if not (1 <= len(s) <= (350 if kind == "host" else 80)):
        return False
    for i, ch in enumerate(s):
        alnum = ch.isascii() and (ch.isalnum() or ch == "_")
        if i == 0:
            if not alnum:
                return False
            continue
        if ch in "_-":
            continue
        if ch == ".":
            if kind == "namespace":
                return False
            continue
        if ch == ":":
            if kind != "host":
                return False
            continue
        if not alnum:
            return False
    return True


@dataclass(frozen=True)
class Name:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        return self.full.lower()

    @property
    def shortest(self) -> str:
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NS:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def valid(self) -> bool:
        return all(_valid_part(k, p) for k, p in (("host", self.host), ("namespace", self.namespace),
                                                  ("model", self.model), ("tag", self.tag)))


def parse_name(s: str) -> Name:
    """model.ParseName: [host/][namespace/]model[:tag] with defaults registry.ollama.ai/library/…:latest."""
    s = s.strip()
    tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, _, tag = s.rpartition(":")
        tag = tag or "!MISSING!"
        s = s or "!MISSING!"
    parts = s.split("/")
    model = parts[-1]
    ns = parts[-2] if len(parts) >= 2 else ""
    host = "/".join(parts[:-2]) if len(parts) >= 3 else ""
    if "://" in host:
        host = host.split("://", 1)[1]
    return Name(host or DEFAULT_HOST, ns or DEFAULT_NS, model, tag or DEFAULT_TAG)


# Published facts of a few library models (sizes/digests as `ollama list` shows them); unknown names get
# plausible derived values.
CATALOG: dict[str, dict[str, Any]] = {
    "llama3.2:latest": dict(arch="llama", parameter_size="3.2B", quant="Q4_K_M", file_type=15, size=2019393189,
                            digest="a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                            ctx=131072, emb=3072, params=3212749888, blocks=28, heads=24, kv_heads=8,
                            vocab=128256, ffn=8192, rope=500000.0, eps=1e-5, tokenizer="gpt2", pre="llama-bpe",
                            bos=128000, eos=128009, license="LLAMA 3.2 COMMUNITY LICENSE AGREEMENT"),
    "qwen2.5:0.5b": dict(arch="qwen2", parameter_size="494.03M", quant="Q4_K_M", file_type=15, size=397821319,
                         digest="a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67",
                         ctx=32768, emb=896, params=494032768, blocks=24, heads=14, kv_heads=2, vocab=151936,
                         ffn=4864, rope=1000000.0, eps=1e-6, tokenizer="gpt2", pre="qwen2", bos=151643,
                         eos=151645, license="Apache License Version 2.0"),
    "nomic-embed-text:latest": dict(arch="nomic-bert", parameter_size="137M", quant="F16", file_type=1,
                                    size=274302450,
                                    digest="0a109f422b47e3a30ba2b10eca18548e944e8a23073ee3f3e947efcf3c45e59f",
                                    ctx=2048, emb=768, params=136727040, blocks=12, heads=12, kv_heads=12,
                                    vocab=30522, ffn=3072, rope=1000.0, eps=1e-12, tokenizer="bert", pre="",
                                    bos=101, eos=102, license="Apache License Version 2.0"),
}

TEMPLATES = {
    "llama": ('<|start_header_id|>system<|end_header_id|>\n\n{{ if .System }}{{ .System }}{{ end }}'
              '<|eot_id|>{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n'
              '{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n'),
    "qwen2": ('{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{- range .Messages }}'
              '<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n'),
    "nomic-bert": "{{ .Prompt }}",
}
STOPS = {"llama": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "qwen2": ["<|im_start|>", "<|im_end|>"]}


@dataclass
class ModelInfo:
    name: Name
    caps: list[str]
    modified_ns: int
    facts: dict[str, Any]

    @property
    def arch(self) -> str:
        return self.facts["arch"]

    def details(self, with_lengths: bool) -> dict:
        d = {"parent_model": "", "format": "gguf", "family": self.arch, "families": [self.arch],
             "parameter_size": self.facts["parameter_size"], "quantization_level": self.facts["quant"]}
        if with_lengths:
            d["context_length"] = self.facts["ctx"]
            d["embedding_length"] = self.facts["emb"]
        return d

    def kv_bytes_per_token(self) -> int:
        f = self.facts
        return f["blocks"] * f["kv_heads"] * (f["emb"] // max(f["heads"], 1)) * 2 * 2


def model_facts(name: Name, embed: bool) -> dict[str, Any]:
    short = name.shortest.lower()
    if short in CATALOG:
        return dict(CATALOG[short])
    low = name.model.lower()
    arch = ("nomic-bert" if embed else "qwen2" if "qwen" in low else "gemma3" if "gemma" in low
            else "phi3" if "phi" in low else "llama")
    m = re.search(r"(\d+(?:\.\d+)?)([bm])", name.tag.lower())
    billions = (float(m.group(1)) / (1000 if m.group(2) == "m" else 1)) if m else 1.0
    psize = (f"{m.group(1)}{m.group(2).upper()}" if m else "1B")
    digest = hashlib.sha256(name.full.encode()).hexdigest()
    return dict(arch=arch, parameter_size=psize, quant="F16" if embed else "Q4_K_M", file_type=1 if embed else 15,
                size=int(billions * 0.6e9) + 1_000_000, digest=digest, ctx=2048 if embed else 8192,
                emb=768 if embed else 2048, params=int(billions * 1e9), blocks=16, heads=16, kv_heads=8,
                vocab=32000, ffn=8192, rope=10000.0, eps=1e-5, tokenizer="gpt2", pre="default", bos=1, eos=2,
                license="")
