"""Launch recipes as data: deploy/recipes/<kind>.yaml, loaded and validated here (pydantic).

A recipe names the parameters its backend has (`parameters`), says why it lacks the others
(`unsupported`), and holds per process an argv template: groups of tokens with `{name}` placeholders.
A group is dropped when a placeholder's value is unset, so every flag appears only when asked for.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator



def _recipes_dir() -> Path:
    """deploy/recipes in a checkout (or an editable install); an installed wheel carries them as data
    files under <prefix>/share/llm-gateway/recipes (pyproject's [tool.setuptools.data-files])."""
    source = Path(__file__).resolve().parents[2] / "deploy" / "recipes"
    return source if source.is_dir() else Path(sys.prefix) / "share" / "llm-gateway" / "recipes"


RECIPES_DIR = _recipes_dir()

# The one vocabulary of launch parameters (`llm-gateway recipe` flags, a backend's `launch:` block).
PARAMETERS = ("model", "host", "port", "context", "slots", "served_name", "api_key", "gpus", "dtype",
              "quantization", "gpu_memory_utilization", "gpu_layers")
# Values computed from the parameters (gateway.recipes.plan.variables); templates may use them too.
DERIVED = ("devices", "gpu_count", "tensor_split", "multi_gpu", "context_minus_one", "worker_port", "worker_url",
           "controller_url", "rwkv_strategy", "custom_cuda", "ollama_name", "server_address")
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
Condition = Literal["gpu", "cpu", "multi_gpu", "model_is_file", "model_is_name"]


class RecipeError(ValueError):
    """A recipe file is wrong, or a launch asks for what its backend does not have (one line)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArgGroup(_Strict):
    args: list[str]
    when: Condition | None = None      # only on GPUs / CPU / several GPUs / for a model file or a name
    unless: str | None = None          # dropped when this parameter is given (a default for it)


class Ready(_Strict):
    path: str
    method: Literal["GET", "POST"] = "GET"
    budget_s: float = Field(gt=0)      # start-up budget: loading a model can take minutes


class HttpStep(_Strict):
    method: Literal["GET", "POST"] = "POST"
    path: str
    json_body: dict[str, Any] = Field(alias="json")


class PostStart(_Strict):
    name: str
    when: Condition | None = None
    http: HttpStep | None = None
    exec: list[list[str]] | None = None   # argv groups (a group with an unset value is left out)
    env: dict[str, str] = {}              # e.g. OLLAMA_HOST: "{server_address}" for the ollama client
    budget_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _one_action(self) -> PostStart:
        if (self.http is None) == (self.exec is None):
            raise ValueError(f"post-start step {self.name!r}: give exactly one of http or exec")
        return self


class Volume(_Strict):
    source: str
    target: str
    read_only: bool = False


class Process(_Strict):
    name: str
    program: list[str] = Field(min_length=1)   # argv prefix on a host (launch.binary replaces [0])
    image_program: list[str]                   # argv prefix inside the image ([]: its entrypoint)
    port: str                                  # the variable holding this process's port
    args: list[list[str] | ArgGroup]
    env: dict[str, str] = {}
    pass_env: list[str] = []                   # taken from the caller's environment, never written
    secret_env: dict[str, str] = {}            # parameter -> env var the backend reads the secret from
    ready: Ready
    metrics: str | None = None
    healthcheck: list[str]
    volumes: list[Volume] = []
    depends_on: list[str] = []
    uses_gpus: bool = True                     # False: no GPU reservation (FastChat's controller)
    ipc_host: bool = False
    shm_size: str | None = None
    post_start: list[PostStart] = []

    def groups(self) -> list[ArgGroup]:
        return [g if isinstance(g, ArgGroup) else ArgGroup(args=g) for g in self.args]


class Image(_Strict):
    gpu: str | None = None
    cpu: str | None = None
    build: str | None = None      # no published image: a build context (git URL#ref[:dir])
    tag: str | None = None        # the name the built image gets

    @model_validator(mode="after")
    def _some_image(self) -> Image:
        if not (self.gpu or self.cpu or (self.build and self.tag)):
            raise ValueError("image: give gpu/cpu image names, or build + tag")
        return self


class Recipe(_Strict):
    kind: str
    title: str
    sources: list[str] = Field(min_length=1)
    image: Image
    parameters: list[str]
    unsupported: dict[str, str]
    values: dict[str, dict[str, str]] = {}   # canonical value -> the backend's spelling
    processes: list[Process] = Field(min_length=1)
    default_port: int
    default_gpus: list[int]
    backend_process: str                     # its port is the gateway's backend url

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        known = set(PARAMETERS)
        for name in [*self.parameters, *self.unsupported]:
            if name not in known:
                raise ValueError(f"unknown parameter {name!r} (known: {', '.join(PARAMETERS)})")
        if missing := known - set(self.parameters) - set(self.unsupported):
            raise ValueError(f"say whether it has {', '.join(sorted(missing))}: list under parameters or unsupported")
        if both := set(self.parameters) & set(self.unsupported):
            raise ValueError(f"{', '.join(sorted(both))}: both supported and unsupported")
        names = [p.name for p in self.processes]
        if self.backend_process not in names:
            raise ValueError(f"backend_process {self.backend_process!r} is not one of {names}")
        allowed = set(self.parameters) | set(DERIVED)
        for proc in self.processes:
            texts = [t for g in proc.groups() for t in g.args] + list(proc.env.values()) + proc.healthcheck
            for step in proc.post_start:
                texts += [t for g in step.exec or [] for t in g]
                texts += [str(v) for v in (step.http.json_body.values() if step.http else [])]
                texts += list(step.env.values())
            for text in texts:
                for var in _PLACEHOLDER.findall(text):
                    if var not in allowed:
                        raise ValueError(f"process {proc.name}: {{{var}}} is not a parameter of this recipe")
            for param in proc.secret_env:
                if param not in self.parameters:
                    raise ValueError(f"process {proc.name}: secret_env {param!r} is not a parameter")
            for dep in proc.depends_on:
                if dep not in names:
                    raise ValueError(f"process {proc.name}: depends_on {dep!r} is not a process")
        return self

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)


def kinds() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


@cache
def load(kind: str) -> Recipe:
    path = RECIPES_DIR / f"{kind}.yaml"
    if not path.is_file():
        raise RecipeError(f"no recipe for kind {kind!r} (recipes: {', '.join(kinds())})")
    return parse(yaml.safe_load(path.read_text()), str(path))


def parse(data: Any, where: str) -> Recipe:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise RecipeError(f"{where}: {loc + ': ' if loc else ''}{first['msg']}") from None
    if Path(where).suffix == ".yaml" and Path(where).stem != recipe.kind:
        raise RecipeError(f"{where}: kind {recipe.kind!r} differs from the file name")
    return recipe
