"""One launch, planned: a recipe (catalog.py) filled with launch parameters gives the processes to run.

A Plan is one process (argv, env, image, port, volumes, health check, GPUs, post-start steps); a Launch is
the plans of one backend (FastChat: controller + worker) and the URL the gateway reaches it at. The same
Launch renders to a shell line, a compose service (render.py) and, later, a Kubernetes container. Two
targets differ only where they must: on a `host` the server listens on --host (default loopback) and GPUs
are picked by CUDA_VISIBLE_DEVICES; in a `container` it listens on 0.0.0.0, peers are compose service
names, and GPUs are reserved by device id (the container then sees them as 0..n-1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.recipes.catalog import PostStart, Process, Recipe, RecipeError, Volume, load

Target = Literal["host", "container"]
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_ANY_HOST = ("0.0.0.0", "::", "")
# Derived values and the parameters they consume: a parameter is used when any of them is rendered.
_CONSUMES = {"devices": ("gpus",), "gpu_count": ("gpus",), "tensor_split": ("gpus",), "multi_gpu": ("gpus",),
             "context_minus_one": ("context",), "rwkv_strategy": ("gpus", "dtype", "quantization", "gpu_layers"),
             "custom_cuda": ("gpus",), "ollama_name": ("served_name",)}
_DTYPES = {"fp16": "float16", "half": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp32": "float32", "float": "float32", "float32": "float32", "auto": "auto"}
_QUANT_ALIASES = {"8bit": "int8", "int8": "int8", "i8": "int8"}


class LaunchParams(BaseModel):
    """Recipe parameters: the `llm-gateway recipe` flags, and a backend's `launch:` block in the config."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    gpus: list[int] | None = None                  # None: the recipe's default; []: CPU only
    context: int | None = Field(None, ge=2)
    slots: int | None = Field(None, ge=1)
    served_name: str | None = None
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # the variable, never the key
    dtype: str | None = None
    quantization: str | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    gpu_layers: int | None = Field(None, ge=0)
    binary: str | None = None                      # the executable on a host (default: the recipe's program)
    args: list[str] = []                           # passed through after the rendered flags
    name: str | None = None                        # compose service name (default: the kind)


@dataclass
class EnvVar:
    name: str
    value: str | None = None       # a literal
    from_env: str | None = None    # the caller's variable of that name (secrets, tokens): never a literal


@dataclass
class Step:
    """A post-start step: after the process is ready, an HTTP call or a command (Ollama pull/create)."""
    name: str
    budget_s: float
    env: list[EnvVar]
    url: str | None = None
    method: str = "POST"
    body: dict[str, Any] | None = None
    argv: list[str] = field(default_factory=list)


@dataclass
class Plan:
    kind: str
    service: str                    # compose service name
    process: str
    argv: list[str]                 # on a host: program + args
    image_argv: list[str]           # in the image: image_program + args ([] = the image's own command)
    env: list[EnvVar]
    image: str | None
    build: str | None
    host: str
    port: int
    ready_url: str
    ready_method: str
    ready_budget_s: float
    healthcheck: list[str]
    metrics_path: str | None
    gpus: list[int]                 # [] = CPU
    volumes: list[Volume]
    depends_on: list[str]
    ipc_host: bool = False
    shm_size: str | None = None
    post_start: list[Step] = field(default_factory=list)


@dataclass
class Launch:
    kind: str
    target: Target
    plans: list[Plan]
    backend_url: str                # what the gateway's backends[].url is


def canonical(param: str, value: str) -> str:
    v = value.strip().lower()
    if param == "dtype":
        return _DTYPES.get(v, v)
    return _QUANT_ALIASES.get(v, v)


def _address(host: str) -> str:
    return "127.0.0.1" if host in _ANY_HOST else host


def _rwkv_strategy(recipe: Recipe, gpus: list[int], dtype: str | None, quant: str | None,
                   layers: int | None) -> str:
    """RWKV's strategy string: `cuda fp16`, `cuda:0 fp16 *16 -> cuda:1 fp16`, `cuda fp16 *10 -> cpu fp32`."""
    prec = recipe.values["dtype"][dtype] if dtype else ("fp16" if gpus else "fp32")
    suffix = recipe.values["quantization"][quant] if quant else ""
    if not gpus:
        return f"cpu {prec}{suffix}"
    if len(gpus) == 1:
        return f"cuda {prec}{suffix}" + (f" *{layers} -> cpu fp32" if layers is not None else "")
    if layers is None:
        raise RecipeError(f"{recipe.kind}: splitting over {len(gpus)} GPUs needs the model's layer count "
                          "(--gpu-layers N)")
    per = math.ceil(layers / len(gpus))
    stages = [f"cuda:{i} {prec}{suffix} *{per}" for i in range(len(gpus) - 1)]
    return " -> ".join([*stages, f"cuda:{len(gpus) - 1} {prec}{suffix}"])


def variables(recipe: Recipe, p: LaunchParams, target: Target) -> dict[str, Any]:
    """Every template value of this launch; None means unset (its flag group is left out)."""
    gpus = recipe.default_gpus if p.gpus is None else p.gpus
    host = "0.0.0.0" if target == "container" else (p.host or "127.0.0.1")
    port = p.port or recipe.default_port
    values: dict[str, Any] = {}
    for param in ("dtype", "quantization"):
        raw = getattr(p, param)
        if raw is None:
            values[param] = None
            continue
        choices = recipe.values.get(param, {})
        key = canonical(param, raw)
        if key not in choices:
            raise RecipeError(f"{recipe.kind}: {param} {raw!r} is not one of: {', '.join(choices)}")
        values[param] = key
    service = p.name or recipe.kind

    def url(process: str, port_: int) -> str:
        name = service if len(recipe.processes) == 1 else f"{service}-{process}"
        return f"http://{name if target == 'container' else _address(host)}:{port_}"

    model_is_file = PurePath(p.model).suffix.lower() == ".gguf"
    v: dict[str, Any] = {
        "model": p.model, "host": host, "port": str(port), "context": _str(p.context), "slots": _str(p.slots),
        "served_name": p.served_name, "api_key": p.api_key_env, "gpus": gpus,
        "dtype": recipe.values.get("dtype", {}).get(values["dtype"]) if values["dtype"] else None,
        "quantization": recipe.values.get("quantization", {}).get(values["quantization"])
        if values["quantization"] else None,
        "gpu_memory_utilization": _str(p.gpu_memory_utilization), "gpu_layers": _str(p.gpu_layers),
        # In a container the reserved GPUs are the only ones it sees: no CUDA_VISIBLE_DEVICES there.
        "devices": ",".join(map(str, gpus)) if gpus and target == "host" else None,
        "gpu_count": str(len(gpus)) if gpus else None,
        "tensor_split": ",".join("1" for _ in gpus) if len(gpus) > 1 else None,
        "multi_gpu": "1" if len(gpus) > 1 else None,
        "context_minus_one": _str(p.context - 1) if p.context else None,
        "worker_port": str(port + 1), "worker_url": url("worker", port + 1), "controller_url": url("controller", port),
        "custom_cuda": bool(gpus) and target == "container",  # the image has nvcc to build RWKV's kernel
        "ollama_name": p.served_name or (PurePath(p.model).stem if model_is_file else None),
        "_gpu": bool(gpus), "_cpu": not gpus, "_multi_gpu": len(gpus) > 1,
        "_model_is_file": model_is_file, "_model_is_name": not model_is_file, "_url": url,
    }
    if recipe.kind == "rwkv-runner":
        v["rwkv_strategy"] = _rwkv_strategy(recipe, gpus, values["dtype"], values["quantization"], p.gpu_layers)
    else:
        v["rwkv_strategy"] = None
    return v


def _str(x: float | int | None) -> str | None:
    return None if x is None else str(x)


class _Filler:
    """Fills templates and records which parameters were rendered (an unrendered given one is an error)."""

    def __init__(self, v: dict[str, Any]) -> None:
        self.v, self.used = v, set()

    def group(self, tokens: list[str]) -> list[str] | None:
        names = [n for t in tokens for n in _PLACEHOLDER.findall(t)]
        if any(self.v.get(n) is None for n in names):
            return None
        for n in names:
            self.used.update(_CONSUMES.get(n, (n,)))
        return [_PLACEHOLDER.sub(lambda m: str(self.v[m.group(1)]), t) for t in tokens]

    def value(self, template: Any) -> Any:
        if isinstance(template, str) and (m := _PLACEHOLDER.fullmatch(template)):
            self.group([template])
            return self.v[m.group(1)]          # raw: a bool stays a bool in a JSON body
        return self.group([template])[0] if isinstance(template, str) else template

    def when(self, cond: str | None) -> bool:
        return cond is None or bool(self.v[f"_{cond}"])


def build(kind: str, p: LaunchParams, target: Target = "host") -> Launch:
    recipe = load(kind)
    given = {name for name in ("host", "port", "context", "slots", "served_name", "dtype", "quantization",
                               "gpu_memory_utilization", "gpu_layers", "gpus")
             if getattr(p, name) is not None}
    given |= {"api_key"} if p.api_key_env else set()
    for name in sorted(given):
        if name in recipe.unsupported:
            raise RecipeError(f"{kind} has no {name} parameter: {recipe.unsupported[name]}")
    v = variables(recipe, p, target)
    fill = _Filler(v)
    # model, host and port are always rendered; the GPUs always decide the image, reservation and env.
    fill.used.update({"model", "host", "port", "gpus"})
    plans = [_plan(recipe, proc, p, v, fill, target) for proc in recipe.processes]
    if unused := sorted(given - fill.used):
        raise RecipeError(f"{kind}: {', '.join(unused)} would be dropped by this launch "
                          f"(model {'file' if v['_model_is_file'] else 'name'} {p.model!r}, "
                          f"{'GPUs ' + str(v['gpus']) if v['gpus'] else 'CPU'})")
    backend = next(pl for pl in plans if pl.process == recipe.backend_process)
    return Launch(kind, target, plans, v["_url"](backend.process, backend.port))


def _plan(recipe: Recipe, proc: Process, p: LaunchParams, v: dict[str, Any], fill: _Filler,
          target: Target) -> Plan:
    args: list[str] = []
    for g in proc.groups():
        if fill.when(g.when) and not (g.unless and v.get(g.unless) is not None):
            args += fill.group(g.args) or []
    if proc.name == recipe.processes[-1].name:
        args += p.args
    env = [EnvVar(k, g[0]) for k, t in proc.env.items() if (g := fill.group([t]))]
    for param, var in proc.secret_env.items():
        if v.get(param) is not None:
            fill.used.add(param)
            env.append(EnvVar(var, from_env=v[param]))
    env += [EnvVar(name, from_env=name) for name in proc.pass_env]
    port = int(v[proc.port])
    service = p.name or recipe.kind
    service = service if len(recipe.processes) == 1 else f"{service}-{proc.name}"
    base = v["_url"](proc.name, port)
    program = list(proc.program)
    if p.binary:                   # one executable for all of a kind's processes (FastChat: its python)
        program[0] = p.binary
    gpu = bool(v["_gpu"])
    image = (recipe.image.gpu if gpu else recipe.image.cpu) or recipe.image.tag
    if image is None and target == "container":
        raise RecipeError(f"{recipe.kind}: its recipe has no {'GPU' if gpu else 'CPU'} image")
    v["server_address"] = base.removeprefix("http://")
    steps = [_step(s, v, fill, base) for s in proc.post_start if fill.when(s.when)]
    return Plan(
        kind=recipe.kind, service=service, process=proc.name, argv=program + args,
        image_argv=list(proc.image_program) + args, env=env, image=image, build=recipe.image.build,
        host=v["host"], port=port, ready_url=base + proc.ready.path, ready_method=proc.ready.method,
        ready_budget_s=proc.ready.budget_s, healthcheck=[t.replace("{port}", str(port)) for t in proc.healthcheck],
        metrics_path=proc.metrics, gpus=list(v["gpus"]) if proc.uses_gpus else [], volumes=list(proc.volumes),
        depends_on=[service.removesuffix(proc.name) + d for d in proc.depends_on],
        ipc_host=proc.ipc_host, shm_size=proc.shm_size, post_start=[s for s in steps if s is not None])


def _step(s: PostStart, v: dict[str, Any], fill: _Filler, base: str) -> Step | None:
    env = [EnvVar(k, g[0]) for k, t in s.env.items() if (g := fill.group([t]))]
    if s.http is not None:
        body = {k: fill.value(t) for k, t in s.http.json_body.items()}
        return Step(s.name, s.budget_s, env, url=base + s.http.path, method=s.http.method, body=body)
    groups = [fill.group(g) for g in s.exec or []]
    if groups[0] is None:          # its command needs a value not given (e.g. no --served-name to copy to)
        return None
    return Step(s.name, s.budget_s, env, argv=[t for g in groups if g for t in g])
