"""`llm-gateway size`: its arguments and the human/JSON output of gateway.recipes.sizing.estimate()."""

from __future__ import annotations

import argparse
import json
import re
import sys

from gateway.recipes.architectures import SizingError, resolve
from gateway.recipes.gpus import parse_gpus
from gateway.recipes.sizing import ENGINES, Estimate, SizingRequest, estimate, human

_COUNT = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmbt]?)$", re.I)


def parse_count(text: str) -> float:
    """`7B`, `70b`, `1.5T`, `800M`, or a plain number of parameters."""
    m = _COUNT.match(text.strip())
    if not m:
        raise SizingError(f"bad parameter count {text!r}: use 7B, 1.5B, 800M")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]


def _one_line_error(message: str) -> None:
    sys.stderr.write(f"llm-gateway size: {message}\n")
    raise SystemExit(2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.error = _one_line_error  # type: ignore[method-assign]  # argparse's usage + error: one line instead
    p.add_argument("--model", "-m", required=True, metavar="M",
                   help="hub id of the built-in table, a GGUF file, a config.json "
                   "or a directory holding one")
    p.add_argument("--format", "-f", metavar="F",
                   help="fp32 fp16 bf16 fp8 int8 int4 gptq awq, or a GGUF type q2_k..q8_0, f16 "
                   "(default: the file's own, else bf16; q4_k_m for llama.cpp)")
    p.add_argument("--context", "-c", type=int, metavar="N", help="tokens per sequence (default: the model's maximum)")
    p.add_argument("--slots", type=int, default=1, metavar="N", help="concurrent sequences at full context (default 1)")
    p.add_argument("--gpus", metavar="SPEC",
                   help="2x24GiB | 24GiB,16GiB | device indices 0,1 (sizes read with nvidia-ml-py)")
    p.add_argument("--engine", choices=ENGINES, help="default: llamacpp for GGUF formats, else vllm")
    p.add_argument("--gpu-memory-utilization", type=float, metavar="F", help="vLLM's fraction (default 0.9; TGI 1.0)")
    p.add_argument("--gpu-layers", type=int, metavar="N", help="llama.cpp -ngl: layers on GPU, the rest in RAM")
    p.add_argument("--cache-type", default="f16", metavar="T",
                   help="KV cache type: f16, bf16, q8_0, q4_0, fp8 (default f16)")
    p.add_argument("--params", metavar="COUNT",
                   help="parameter count, e.g. 7B (for a model not in the table, or to override)")
    p.add_argument("--layers", type=int, metavar="N", help="transformer layers")
    p.add_argument("--kv-heads", type=int, metavar="N", help="KV heads (GQA); = attention heads without GQA")
    p.add_argument("--head-dim", type=int, metavar="N", help="dimension of one attention head")
    p.add_argument("--heads", type=int, metavar="N", help="attention heads (default: --kv-heads)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the text breakdown")


def run(args: argparse.Namespace) -> int:
    try:
        arch = resolve(args.model, params=parse_count(args.params) if args.params else None, layers=args.layers,
                       kv_heads=args.kv_heads, head_dim=args.head_dim, heads=args.heads)
        req = SizingRequest(arch=arch, format=args.format, context=args.context, slots=args.slots,
                            gpus=parse_gpus(args.gpus) if args.gpus else [], engine=args.engine,
                            gpu_memory_utilization=args.gpu_memory_utilization, gpu_layers=args.gpu_layers,
                            cache_type=args.cache_type)
        est = estimate(req)
    except SizingError as exc:
        sys.stderr.write(f"llm-gateway size: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(est.as_dict()) + "\n" if args.json else render(est))
    return 0


def render(e: Estimate) -> str:
    lines = [f"{e.model}  format {e.format}  engine {e.engine}  context {e.context} x {e.slots} slot(s)  "
             f"KV cache {e.cache_type}",
             f"  weights    {human(e.weights_bytes):>12}",
             f"  KV cache   {human(e.kv_cache_bytes):>12}   ({e.kv_bytes_per_token / 1024:g} KiB per token)",
             f"  overhead   {human(e.overhead_bytes):>12}   (CUDA context, compute/activation buffers)",
             f"  total      {human(e.total_bytes):>12}"]
    if e.ram_bytes:
        lines.append(f"  in RAM     {human(e.ram_bytes):>12}   ({e.gpu_layers} GPU layers)")
    for g in e.per_gpu:
        d = g.as_dict()
        lines.append(f"  GPU {g.index}: {human(g.used_bytes)} of {human(g.budget_bytes)} usable "
                     f"({human(g.total_bytes)} total): weights {human(g.weights_bytes)}, KV "
                     f"{human(g.kv_cache_bytes)}, overhead {human(g.overhead_bytes)}"
                     f"{'' if d['fits'] else '  DOES NOT FIT'}")
    if e.per_gpu:
        lines.append("fits: yes" if e.fits else "fits: NO")
    lines += [f"- {a}" for a in e.advice]
    return "\n".join(lines) + "\n"
