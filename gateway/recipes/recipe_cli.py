"""`llm-gateway recipe KIND --model M ...`: a backend's launch plan as shell lines and compose services."""

from __future__ import annotations

import argparse
import sys

import yaml
from pydantic import ValidationError

from gateway.recipes.catalog import RecipeError, kinds
from gateway.recipes.fit import check
from gateway.recipes.plan import LaunchParams, build
from gateway.recipes.render import compose_services, shell_lines


def _one_line_error(message: str) -> None:
    sys.stderr.write(f"llm-gateway recipe: {message}\n")
    raise SystemExit(2)


def parse_gpus(text: str) -> list[int]:
    """`0,1` -> [0, 1]; `none` or `cpu` -> [] (CPU only)."""
    if text.strip().lower() in ("none", "cpu", ""):
        return []
    try:
        gpus = [int(x) for x in text.split(",")]
    except ValueError:
        raise RecipeError(f"bad --gpus {text!r}: use device indices like 0,1 (or none for CPU)") from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise RecipeError(f"bad --gpus {text!r}: indices must be distinct and not negative")
    return gpus


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.error = _one_line_error  # type: ignore[method-assign]  # one line, not argparse's usage block
    p.add_argument("kind", help="one of: " + ", ".join(kinds()))
    p.add_argument("--model", "-m", required=True, help="path or hub id, as the kind takes it")
    p.add_argument("--port", type=int, help="listen port (default: the kind's usual one)")
    p.add_argument("--host", help="listen address on a host (default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--gpus", help="device indices 0,1 (default 0); none: CPU only")
    p.add_argument("--context", type=int, help="context length in tokens")
    p.add_argument("--slots", type=int, help="parallel sequences (slots / max sequences / concurrency)")
    p.add_argument("--dtype", help="weights' type: float16, bfloat16, float32 (fp16/bf16/fp32), auto")
    p.add_argument("--quantization", help="the kind's quantization method, e.g. awq, gptq, fp8, int8, q4_k_m")
    p.add_argument("--gpu-memory-utilization", type=float, help="fraction of each GPU's memory (0-1]")
    p.add_argument("--gpu-layers", type=int, help="layers on the GPUs (llama.cpp -ngl; RWKV: the model's "
                   "layer count to split over several GPUs, or layers on one GPU with the rest on CPU)")
    p.add_argument("--served-name", help="the model name the server answers to")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the backend's API key "
                   "(rendered as a reference, never the key)")
    p.add_argument("--binary", help="the executable on a host (default: the kind's usual name on PATH)")
    p.add_argument("--name", help="compose service name (default: the kind)")
    p.add_argument("--gpu-memory", metavar="SIZE", help="memory of each GPU (24GiB, 80GB) to check that the "
                   "launch fits (default: read with nvidia-ml-py when installed)")
    p.add_argument("--force", action="store_true", help="print the plan even when it will not fit (a warning)")
    p.add_argument("--format", choices=("plan", "command", "compose"), default="plan",
                   help="plan: both (default); command: shell line(s) only; compose: services only")


def run(args: argparse.Namespace) -> int:
    if args.format == "compose" and args.host:
        _one_line_error(f"{args.kind}: --host is for a launch on a host; in a container it listens on 0.0.0.0")
    try:
        params = LaunchParams(
            model=args.model, host=args.host, port=args.port,
            gpus=None if args.gpus is None else parse_gpus(args.gpus), context=args.context, slots=args.slots,
            served_name=args.served_name, api_key_env=args.api_key_env, dtype=args.dtype,
            quantization=args.quantization, gpu_memory_utilization=args.gpu_memory_utilization,
            gpu_layers=args.gpu_layers, binary=args.binary, name=args.name)
        host = build(args.kind, params, "host") if args.format != "compose" else None
        container = build(args.kind, params, "container") if args.format != "command" else None
    except ValidationError as exc:
        err = exc.errors()[0]
        field = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "input"
        _one_line_error(f"{args.kind}: {field}: {err['msg']}")
        return 2
    except RecipeError as exc:
        _one_line_error(str(exc))
        return 2
    gpus = (host or container).plans[-1].gpus  # type: ignore[union-attr]
    try:
        fits, why = check(args.kind, params, gpus, args.gpu_memory)
    except RecipeError as exc:
        _one_line_error(str(exc))
    if fits is False and not args.force:
        _one_line_error(why + " (--force prints it anyway)")
    if fits is False:
        sys.stderr.write(f"llm-gateway recipe: warning: {why}\n")
    elif fits is None and args.gpu_memory:
        sys.stderr.write(f"llm-gateway recipe: fit not checked: {why}\n")
    out: list[str] = []
    if host is not None:
        if args.format == "plan":
            out += [f"# {args.kind}: the gateway's backend url is {host.backend_url}", "# shell"]
        out += shell_lines(host)
    if container is not None:
        if args.format == "plan":
            out += ["", f"# compose (in compose the gateway reaches it at {container.backend_url})"]
        out.append(yaml.safe_dump(compose_services(container), sort_keys=False, width=1000,
                                  default_flow_style=None).rstrip("\n"))
    sys.stdout.write("\n".join(out) + "\n")
    return 0
