"""Launch recipes (deploy/recipes/*.yaml): they load, every parameter renders, a parameter a backend lacks
is an error naming it, GPUs map per kind, compose output passes the Compose schema, shell lines round-trip
through shlex, and `llm-gateway recipe` answers bad input with one line and exit 2 (a real process)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from gateway.recipes.catalog import PARAMETERS, RecipeError, kinds, load, parse
from gateway.recipes.plan import LaunchParams, build
from gateway.recipes.render import compose_services, shell_line, shell_lines
from tests.procs import ROOT

KINDS = ["fastchat", "llamacpp", "ollama", "rwkv-runner", "tgi", "vllm"]
SPEC = json.loads((ROOT / "tests" / "fixtures" / "compose-spec.json").read_text())
# One value per parameter, each distinctive enough to find in the rendered output.
SAMPLE = {"host": "10.1.2.3", "port": 18123, "context": 7777, "slots": 13, "served_name": "pub-name",
          "api_key_env": "SECRET_VAR", "dtype": "bf16", "gpu_memory_utilization": 0.77, "gpu_layers": 21}
QUANT = {"vllm": "awq", "tgi": "awq", "fastchat": "int8", "rwkv-runner": "int8", "ollama": "q4_k_m"}
MODEL = {"llamacpp": "/models/m.gguf", "ollama": "/models/m.gguf", "rwkv-runner": "/models/m.pth"}


def _params(kind: str, **over: object) -> LaunchParams:
    return LaunchParams(model=MODEL.get(kind, "org/model"), **over)  # type: ignore[arg-type]


def _supported(kind: str) -> dict[str, object]:
    r = load(kind)
    out = {k: v for k, v in SAMPLE.items() if (k if k != "api_key_env" else "api_key") in r.parameters}
    if "quantization" in r.parameters:
        out["quantization"] = QUANT[kind]
    return out


def _text(kind: str, target: str, **over: object) -> str:
    launch = build(kind, _params(kind, **over), target)  # type: ignore[arg-type]
    return "\n".join(shell_lines(launch)) if target == "host" else json.dumps(compose_services(launch))


def test_every_kind_has_a_recipe_that_loads() -> None:
    assert kinds() == KINDS
    for kind in KINDS:
        r = load(kind)
        assert r.kind == kind and r.sources and all(s.startswith("https://") for s in r.sources)
        assert set(r.parameters) | set(r.unsupported) == set(PARAMETERS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_supported_parameter_renders(kind: str) -> None:
    """Each parameter the recipe claims changes the output: it is rendered, not silently dropped."""
    gpus = [0, 1] if kind != "rwkv-runner" else [0]
    base = _text(kind, "host", gpus=gpus)
    for name, value in _supported(kind).items():
        text = _text(kind, "host", gpus=gpus, **{name: value})
        assert text != base, f"{kind}: {name} did not change the rendered command"
        shown = {"dtype": load(kind).values.get("dtype", {}).get("bfloat16", "?"), "api_key_env": "${SECRET_VAR}",
                 "quantization": load(kind).values.get("quantization", {}).get(str(value).lower(), "?"),
                 "context": "7777", "gpu_layers": "21"}.get(name, str(value))
        assert shown in text, f"{kind}: {name}={value} rendered without {shown!r}:\n{text}"


@pytest.mark.parametrize("kind", KINDS)
def test_a_parameter_the_backend_lacks_is_an_error_naming_both(kind: str) -> None:
    r = load(kind)
    assert r.unsupported, kind
    for name in r.unsupported:
        value = {"api_key": {"api_key_env": "K"}, "quantization": {"quantization": "awq"}}.get(
            name, {name: SAMPLE.get(name, "x")})
        with pytest.raises(RecipeError) as exc:
            build(kind, _params(kind, **value))
        assert str(exc.value).startswith(f"{kind} has no {name} parameter: "), exc.value


def test_a_value_the_backend_lacks_is_an_error() -> None:
    with pytest.raises(RecipeError, match=r"^tgi: dtype 'fp32' is not one of: float16, bfloat16$"):
        build("tgi", _params("tgi", dtype="fp32"))
    # a pulled Ollama model comes quantized: -q only applies to `ollama create` from a GGUF
    with pytest.raises(RecipeError, match=r"^ollama: quantization would be dropped"):
        build("ollama", LaunchParams(model="llama3.2", quantization="q8_0"))


def test_a_recipe_file_naming_an_unknown_parameter_is_rejected() -> None:
    data = yaml.safe_load((ROOT / "deploy" / "recipes" / "vllm.yaml").read_text())
    data["processes"][0]["args"].append(["--max-loras", "{max_loras}"])
    with pytest.raises(RecipeError, match=r"\{max_loras\} is not a parameter"):
        parse(data, "vllm.yaml")
    data = yaml.safe_load((ROOT / "deploy" / "recipes" / "vllm.yaml").read_text())
    del data["unsupported"]["gpu_layers"]
    with pytest.raises(RecipeError, match="say whether it has gpu_layers"):
        parse(data, "vllm.yaml")


def _argv_env(kind: str, gpus: list[int], **over: object) -> tuple[list[str], dict[str, str]]:
    plan = build(kind, _params(kind, gpus=gpus, **over)).plans[-1]
    return plan.argv, {e.name: e.value or "" for e in plan.env if e.value is not None}


def _after(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_multi_gpu_maps_to_each_kinds_own_flags() -> None:
    argv, env = _argv_env("vllm", [2, 3])
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and _after(argv, "--tensor-parallel-size") == "2"
    argv, env = _argv_env("vllm", [5])
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and "--tensor-parallel-size" not in argv
    argv, env = _argv_env("tgi", [0, 1])
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and _after(argv, "--num-shard") == "2"
    argv, env = _argv_env("llamacpp", [0, 1, 2])
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2" and _after(argv, "--tensor-split") == "1,1,1"
    assert _after(argv, "-ngl") == "all"
    argv, env = _argv_env("llamacpp", [])
    assert "CUDA_VISIBLE_DEVICES" not in env and _after(argv, "-ngl") == "0" and "--tensor-split" not in argv
    argv, env = _argv_env("fastchat", [0, 1])
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and _after(argv, "--num-gpus") == "2"
    argv, _ = _argv_env("fastchat", [])
    assert _after(argv, "--device") == "cpu" and "--num-gpus" not in argv
    body = build("rwkv-runner", _params("rwkv-runner", gpus=[0, 1], gpu_layers=24)).plans[0].post_start[0].body
    assert body is not None and body["strategy"] == "cuda:0 fp16 *12 -> cuda:1 fp16"
    body = build("rwkv-runner", _params("rwkv-runner", gpus=[], quantization="int8")).plans[0].post_start[0].body
    assert body is not None and body["strategy"] == "cpu fp32i8"
    with pytest.raises(RecipeError, match="needs the model's layer count"):
        build("rwkv-runner", _params("rwkv-runner", gpus=[0, 1]))
    _, env = _argv_env("ollama", [0, 1])
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["OLLAMA_SCHED_SPREAD"] == "1"


@pytest.mark.parametrize("kind", KINDS)
def test_compose_services_validate_against_the_compose_spec(kind: str) -> None:
    for gpus in ([0, 1] if kind != "rwkv-runner" else [0], []):
        over = {**_supported(kind), "gpus": gpus}
        if kind == "ollama":
            over.pop("host")
        if not gpus and kind == "tgi":       # TGI publishes CUDA images only: said, not rendered wrong
            with pytest.raises(RecipeError, match="^tgi: its recipe has no CPU image$"):
                build(kind, _params(kind, **over), "container")
            continue
        doc = compose_services(build(kind, _params(kind, **over), "container"))
        errors = list(jsonschema.Draft7Validator(SPEC).iter_errors(doc))
        assert not errors, [e.message for e in errors]
        for name, svc in doc["services"].items():
            assert "SECRET_VAR" not in json.dumps(svc) or svc["environment"]
            devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
            if gpus and not name.endswith(("-controller", "-load", "-create", "-pull", "-alias")):
                assert devices == [{"driver": "nvidia", "device_ids": ["0", "1"][:len(gpus)],
                                    "capabilities": ["gpu"]}], name
            elif not gpus:
                assert not devices, name
            for dep in svc.get("depends_on", {}):
                assert dep in doc["services"], (name, dep)


def test_compose_service_carries_the_recipe() -> None:
    doc = compose_services(build("vllm", _params("vllm", api_key_env="VLLM_KEY", gpus=[0]), "container"))
    svc = doc["services"]["vllm"]
    assert svc["image"] == "vllm/vllm-openai:v0.32.0"
    assert svc["command"][:6] == ["--model", "org/model", "--host", "0.0.0.0", "--port", "8000"]
    assert svc["environment"]["VLLM_API_KEY"] == "${VLLM_KEY:?set VLLM_KEY}"   # a reference, not a key
    assert svc["healthcheck"]["start_period"] == "1200s" and "/health" in " ".join(svc["healthcheck"]["test"])
    assert "CUDA_VISIBLE_DEVICES" not in svc["environment"]   # the reservation renumbers them inside
    fc = compose_services(build("fastchat", _params("fastchat"), "container"))["services"]
    worker = fc["fastchat-worker"]["command"]
    assert _after(worker, "--controller-address") == "http://fastchat-controller:21001"
    assert _after(worker, "--worker-address") == "http://fastchat-worker:21002"
    assert fc["fastchat-worker"]["depends_on"] == {"fastchat-controller": {"condition": "service_healthy"}}
    ol = compose_services(build("ollama", LaunchParams(model="/models/x.gguf"), "container"))
    script = ol["services"]["ollama-create"]["entrypoint"][2]
    assert '"$$1"' in script                            # compose would interpolate a single $
    assert ol["services"]["ollama-create"]["environment"]["OLLAMA_HOST"] == "ollama:11434"


@pytest.mark.parametrize("kind", KINDS)
def test_shell_line_round_trips_through_shlex(kind: str) -> None:
    over = {**_supported(kind), "served_name": "it's \"quoted\" $HOME"} if kind in ("vllm", "llamacpp") \
        else _supported(kind)
    launch = build(kind, _params(kind, gpus=[0], **over))
    for plan in launch.plans:
        words = shlex.split(shell_line(plan))
        env = [f"{e.name}={e.value}" if e.from_env is None else f"{e.name}=${{{e.from_env}}}"
               for e in plan.env if e.from_env != e.name]
        assert words == env + plan.argv
    assert "SECRET_VAR" not in " ".join(launch.plans[-1].argv)      # the key never enters argv


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "recipe", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_cli_formats() -> None:
    r = _cli("llamacpp", "--model", "/m/x.gguf", "--gpus", "0,1", "--format", "command")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == [
        "CUDA_VISIBLE_DEVICES=0,1 llama-server -m /m/x.gguf --host 127.0.0.1 --port 8080 -ngl all "
        "--split-mode layer --tensor-split 1,1 --metrics"]
    r = _cli("vllm", "--model", "org/m", "--format", "compose", "--api-key-env", "MY_KEY")
    doc = yaml.safe_load(r.stdout)
    assert list(doc["services"]) == ["vllm"] and not list(jsonschema.Draft7Validator(SPEC).iter_errors(doc))
    r = _cli("tgi", "--model", "org/m")
    assert "text-generation-launcher --model-id org/m" in r.stdout and "services:" in r.stdout
    assert "backend url is http://127.0.0.1:8080" in r.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["nope", "--model", "x"], "no recipe for kind 'nope'"),
    (["fastchat", "--model", "x", "--context", "4096"], "fastchat has no context parameter"),
    (["ollama", "--model", "x", "--api-key-env", "K"], "ollama has no api_key parameter"),
    (["vllm", "--model", "x", "--gpus", "0,zero"], "bad --gpus '0,zero'"),
    (["vllm", "--model", "x", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
    (["vllm", "--model", "x", "--slots", "many"], "invalid int value"),
    (["vllm"], "required: --model"),
    (["vllm", "--model", "x", "--gpu-memory", "lots"], "bad --gpu-memory 'lots'"),
    (["vllm", "--model", "x", "--host", "10.0.0.1", "--format", "compose"], "in a container it listens on 0.0.0.0"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    r = _cli(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_never_prints_a_key() -> None:
    r = _cli("vllm", "--model", "org/m", "--api-key-env", "VLLM_KEY")
    assert "VLLM_API_KEY=\"${VLLM_KEY}\"" in r.stdout and "--api-key" not in r.stdout


def test_readme_examples_are_the_commands_output() -> None:
    """README "Launch recipes": each `$ llm-gateway recipe ...` example shows what the command prints."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Launch recipes\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(bash|yaml)\n(.*?)```", section, re.S)
    examples = 0
    for lang, block in blocks:
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, shown = chunk.partition("\n")
            args = shlex.split(command)[2:] + (["--format", "command"] if lang == "bash" else [])
            r = _cli(*args)
            assert r.returncode == 0 and r.stdout == shown, (command, r.stdout, r.stderr)
            examples += 1
    assert examples == 7


def test_a_launch_that_will_not_fit_is_refused_unless_forced() -> None:
    """The sizing estimator asked with the launch's own model, context and GPUs (README "Sizing")."""
    args = ["vllm", "--model", "Qwen/Qwen2.5-7B-Instruct", "--context", "32768", "--format", "command"]
    r = _cli(*args, "--gpu-memory", "8GiB")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert "vllm: Qwen/Qwen2.5-7B-Instruct will not fit 1 GPU(s) of 8.00 GiB" in r.stderr, r.stderr
    r = _cli(*args, "--gpu-memory", "8GiB", "--force")
    assert r.returncode == 0 and r.stdout.startswith("CUDA_VISIBLE_DEVICES=0 vllm serve")
    assert r.stderr.startswith("llm-gateway recipe: warning: vllm: Qwen/Qwen2.5-7B-Instruct will not fit")
    r = _cli(*args, "--gpu-memory", "24GiB")
    assert r.returncode == 0 and r.stderr == "" and "vllm serve" in r.stdout
    r = _cli(*args, "--gpu-memory", "8GiB", "--gpus", "0,1,2,3")          # four of them do
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = _cli("fastchat", "--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu-memory", "8GiB", "--dtype", "fp16")
    assert r.returncode == 2 and "fastchat: Qwen/Qwen2.5-7B-Instruct will not fit" in r.stderr
    r = _cli("vllm", "--model", "org/unknown", "--gpu-memory", "8GiB", "--format", "command")
    assert r.returncode == 0 and r.stderr.startswith("llm-gateway recipe: fit not checked: unknown model")


def test_an_installed_wheel_carries_the_recipes(tmp_path: Path) -> None:
    """A plain (non-editable) install finds the recipes without a checkout: pip builds the wheel from the
    source tree, a fresh venv installs it, and `llm-gateway recipe` renders from another directory."""
    src = tmp_path / "src"      # a copy: setuptools builds in the source tree (build/), never in the checkout
    for part in ("gateway", "adapters", "deploy/recipes"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)],
                   check=True, capture_output=True, timeout=300)
    venv = tmp_path / "venv"
    # System site-packages give the dependencies; the venv's own copy of the package comes first on sys.path.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    wheel = next(wheels.glob("llm_gateway-*.whl"))
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import gateway.recipes.catalog as c; print(c.__file__); print(c.RECIPES_DIR); "
             "print(','.join(c.kinds()))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=elsewhere, capture_output=True,
                         text=True, check=True, timeout=60).stdout.splitlines()
    assert out[0].startswith(str(venv)), out          # the installed copy, not the checkout
    assert out[1].startswith(str(venv)), out
    assert out[2].split(",") == KINDS
    line = subprocess.run([str(venv / "bin" / "llm-gateway"), "recipe", "llamacpp", "--model", "/m.gguf",
                           "--format", "command"], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert line.returncode == 0, line.stderr
    assert "llama-server -m /m.gguf" in line.stdout
