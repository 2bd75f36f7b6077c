"""Real FastChat (controller + HF model worker, on CPU) for the tests: its virtualenv and command lines.

`ensure_fastchat_venv()` builds, once per machine, a virtualenv with `fschat[model_worker]` from PyPI
under ~/.cache/llm-gateway/fastchat-<VERSION>/ (override the root with LLM_GATEWAY_CACHE_DIR).

Why these versions: fschat 0.2.36 (the newest on PyPI, Feb 2024) declares its dependencies unpinned;
today's releases break it, hence the known pins `transformers<5` (its HF loading and generation code
is written against 4.x), `pydantic<2` (its API server streams with pydantic-1 calls such as
`chunk.json(exclude_unset=True, ensure_ascii=False)`, a TypeError under pydantic 2) and
`fastapi<0.112` (0.111.x still installs uvicorn[standard], python-multipart etc. by default, as
FastChat's 2024 code expects; fastapi 0.111.1 accepts pydantic 1). torch is
the local CPU wheel `torch==2.13.0+cpu` (/opt/wheels, also on pip's find-links): PyPI itself has only
CUDA builds of torch 2.13.0, and an unpinned `torch` would pull gigabytes of CUDA. accelerate and peft
(the other `model_worker` extras) accept it as is; nothing else CUDA-specific is needed on CPU.

How: every package is installed at the exact version of `_LOCK` with `--no-deps --only-binary :all:`
(a lock file: no resolver, the same venv on every machine, ~70 s, ~1.3 GB). `_LOCK` is what pip
resolves for `fschat[model_worker]==0.2.36 transformers<5 pydantic<2 fastapi<0.112 torch==2.13.0+cpu`,
minus `wavedrom` (+ its `svgwrite`, `six`): that part of `markdown2[all]` is published only as an
sdist, and markdown2 is used by FastChat's gradio web UI alone, never by the controller or workers.
`pip check` passes on the result. A marker file written last records the recipe; a lock file
serialises concurrent builds.

The processes are started as `python -m fastchat.serve.controller` and
`python -m fastchat.serve.model_worker --device cpu ...` (see `controller_args`, `worker_args`).
A worker registers with the controller *before* its own HTTP server is up (it loads the model, posts
/register_worker, then starts uvicorn), so the controller may list a model whose worker does not
answer yet: `wait_worker_ready()` polls the worker itself. The controller must be up before a worker
starts (a failed registration kills the worker).

`generate_prompt_fixtures(venv, out)` writes tests/fixtures/fastchat_prompts.json by running FastChat's
own `fastchat.conversation`, the worker's `/worker_get_conv_template` route and the API server's
`get_gen_params` in that venv (`python -m tests.backends.fastchat_env fixtures` regenerates it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from tests.backends.venv_cache import VenvRecipe, venv_python

FSCHAT_VERSION = "0.2.36"
TORCH_VERSION = "2.13.0+cpu"       # the local CPU wheel; PyPI has only CUDA builds of 2.13.0
TRANSFORMERS_VERSION = "4.57.6"    # newest <5
PYDANTIC_VERSION = "1.10.27"       # newest <2
FASTAPI_VERSION = "0.111.1"        # newest <0.112
PYTHON_VERSION = (3, 11)           # the local torch CPU wheel is cp311
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "fastchat_prompts.json"

# pip's resolution of `fschat[model_worker]==0.2.36 transformers<5 pydantic<2 fastapi<0.112
# torch==2.13.0+cpu` (Python 3.11, x86_64), minus wavedrom, svgwrite and six (see the docstring).
_LOCK = f"""
accelerate==1.15.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
anyio==4.16.0
attrs==26.1.0
certifi==2026.10.18
charset-normalizer==3.5.2
click==8.5.1
dnspython==2.9.2
email-validator==2.4.0
fastapi=={FASTAPI_VERSION}
fastapi-cli==0.0.34
filelock==4.2.12
frozenlist==1.8.0
fschat=={FSCHAT_VERSION}
fsspec==2026.9.0
h11==0.16.0
hf-xet==1.8.0
httpcore==1.0.9
httptools==0.9.0
httpx==0.28.1
huggingface_hub==0.36.2
idna==3.20
Jinja2==3.1.6
latex2mathml==3.81.1
markdown-it-py==4.3.0
markdown2==2.5.5
MarkupSafe==3.0.4
mdurl==0.1.2
mpmath==1.3.0
multidict==7.2.1
networkx==3.6.1
nh3==0.3.8
numpy==2.4.6
packaging==26.3
peft==0.21.2
prompt_toolkit==3.0.53
propcache==0.5.4
protobuf==7.36.2
psutil==7.2.2
pydantic=={PYDANTIC_VERSION}
Pygments==2.21.0
python-dotenv==1.2.4
python-multipart==0.0.34
PyYAML==6.0.3
regex==2026.11.15
requests==2.34.2
rich==15.0.0
rich-toolkit==0.20.6
safetensors==0.8.0
sentencepiece==0.2.3
setuptools==84.2.1
shellingham==1.5.4
shortuuid==1.0.13
starlette==0.37.2
sympy==1.14.0
tiktoken==0.14.0
tokenizers==0.22.2
torch=={TORCH_VERSION}
tqdm==4.70.1
transformers=={TRANSFORMERS_VERSION}
typer==0.28.0
typing_extensions==4.16.0
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
watchfiles==1.3.0
wcwidth==0.9.4
websockets==17.4
yarl==1.25.1
"""

# Must import cleanly (the API server too: the prompt fixture generator uses its get_gen_params).
_CHECK = (
    "import torch, transformers, pydantic, fastapi, fastchat\n"
    "from fastchat.serve import controller, model_worker, openai_api_server\n"
    "from transformers import LlamaForCausalLM\n"
    f"assert fastchat.__version__ == {FSCHAT_VERSION!r}, fastchat.__version__\n"
    f"assert torch.__version__ == {TORCH_VERSION!r}, torch.__version__\n"
    f"assert transformers.__version__ == {TRANSFORMERS_VERSION!r}, transformers.__version__\n"
    f"assert pydantic.VERSION == {PYDANTIC_VERSION!r}, pydantic.VERSION\n"
    "print('fschat', fastchat.__version__, 'torch', torch.__version__, 'transformers',\n"
    "      transformers.__version__, 'pydantic', pydantic.VERSION, 'fastapi', fastapi.__version__)\n"
)

# Environment of every FastChat process. LOGDIR="": FastChat's build_logger() otherwise writes
# controller.log / model_worker_<id>.log into the current directory (the repository).
_BASE_ENV = {
    "LOGDIR": "",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
}


class FastChatUnavailable(RuntimeError):
    """FastChat cannot be installed or run here; the message says why (its tests skip with it; fail under CI)."""


VENV = VenvRecipe(
    f"fastchat-{FSCHAT_VERSION}", _LOCK, _CHECK, python=PYTHON_VERSION, unavailable=FastChatUnavailable,
    env=_BASE_ENV, pip_check=True, log_noise="is ignored: it is neither a file nor a directory",
    hint=lambda wheels: (f"Hint: the venv needs torch=={TORCH_VERSION}, a CPU build that PyPI does not carry; "
                         f"it must be available locally (pip find-links, e.g. {wheels})."))


def ensure_fastchat_venv() -> Path:
    """The virtualenv with fschat[model_worker], built on first use (once per machine); returns its dir."""
    return VENV.ensure(f"installing fschat {FSCHAT_VERSION}", "importing fastchat")


def _env(threads: int) -> dict[str, str]:
    return {
        **_BASE_ENV,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "CPU_ISA": "",             # "amx"/"avx512_bf16" would switch the worker to bf16 + IPEX
        "CUDA_VISIBLE_DEVICES": "",
    }


def controller_args(venv: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment (to merge over os.environ) of a FastChat controller."""
    argv = [str(venv_python(venv)), "-m", "fastchat.serve.controller",
            "--host", "127.0.0.1", "--port", str(port), "--dispatch-method", "shortest_queue"]
    return argv, _env(1)


def worker_args(venv: Path, model_dir: Path, port: int, controller_url: str, *,
                model_names: Sequence[str] | str, conv_template: str = "zero_shot",
                extra: Sequence[str] = (), threads: int = 1) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a FastChat HF model worker on CPU (float32).

    The worker advertises http://127.0.0.1:<port> to the controller (`--worker-address`); that is also
    the address the controller's /get_worker_address hands out.
    """
    names = model_names if isinstance(model_names, str) else ",".join(model_names)
    argv = [str(venv_python(venv)), "-m", "fastchat.serve.model_worker",
            "--model-path", str(model_dir), "--model-names", names,
            "--device", "cpu", "--conv-template", conv_template,
            "--host", "127.0.0.1", "--port", str(port),
            "--worker-address", f"http://127.0.0.1:{port}",
            "--controller-address", controller_url.rstrip("/"),
            *extra]
    return argv, _env(threads)


def wait_worker_ready(worker_url: str, timeout: float = 120.0, proc=None) -> float:
    """Polls the worker's POST /worker_get_status until it answers 200; returns the seconds waited.

    `proc` (a tests.procs.Proc, optional) lets it fail at once, with the log, if the worker exits.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"FastChat worker exited ({proc.popen.returncode}) before it was ready:\n"
                               f"{proc.output()[-8000:]}")
        try:
            if httpx.post(worker_url + "/worker_get_status", timeout=2.0).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    log = f":\n{proc.output()[-8000:]}" if proc is not None else ""
    raise TimeoutError(f"FastChat worker at {worker_url} not ready within {timeout:.0f}s{log}")


# --- prompt fixtures -------------------------------------------------------------------------------

_SYSTEM = {"role": "system", "content": "You are a terse assistant."}
MESSAGE_SETS: dict[str, list[dict]] = {
    "system_user": [_SYSTEM, {"role": "user", "content": "Hello! How are you?"}],
    "system_multi_turn": [
        _SYSTEM,
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?\n\nOne word, please."},
    ],
    "no_system": [{"role": "user", "content": "Count to three."}],
    "multi_turn": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the GPU cross the road?"},
        {"role": "user", "content": "Why?"},
    ],
    # Only the last system message counts, wherever it stands (openai_api_server.get_gen_params).
    "two_systems": [
        {"role": "system", "content": "First system message."},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Second system message."},
    ],
    # A list of content parts: the text parts are joined with "\n" (image parts would add placeholders).
    "content_parts": [{"role": "user", "content": [{"type": "text", "text": "Line one."},
                                                   {"type": "text", "text": "Line two."}]}],
    # An empty content is falsy: most styles render it like the open (None) assistant slot.
    "empty_assistant": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Still there?"},
    ],
}
_ALL4 = ["system_user", "system_multi_turn", "no_system", "multi_turn"]
_TWO = ["system_multi_turn", "no_system"]
# (template, message sets); at least one template for every SeparatorStyle of fschat 0.2.36.
PROMPT_CASES: list[tuple[str, list[str]]] = [
    ("zero_shot", _ALL4),                                                          # ADD_COLON_SINGLE
    ("one_shot", _TWO),                                                            # ADD_COLON_SINGLE
    ("vicuna_v1.1", _ALL4 + ["two_systems", "content_parts", "empty_assistant"]),  # ADD_COLON_TWO
    ("open-orca", _TWO),                                                           # ADD_COLON_SPACE_SINGLE
    ("oasst_pythia", _TWO),                                                        # NO_COLON_SINGLE
    ("aquila-v1", _TWO),                                                           # NO_COLON_TWO
    ("deepseek-coder", _TWO),                                                      # ADD_NEW_LINE_SINGLE
    ("llama-2", _ALL4),                                                            # LLAMA2
    ("mistral", _TWO),                                                             # LLAMA2
    ("chatglm2", _TWO),                                                            # CHATGLM
    ("qwen-7b-chat", _ALL4),                                                       # CHATML
    ("zephyr", _TWO),                                                              # CHATML
    ("internlm-chat", _TWO),                                                       # CHATINTERN
    ("dolly_v2", _TWO),                                                            # DOLLY
    ("rwkv", _TWO),                                                                # RWKV
    ("phoenix", _TWO),                                                             # PHOENIX
    ("Robin", _TWO),                                                               # ROBIN
    ("falcon-chat", _TWO),                                                         # FALCON_CHAT
    ("chatglm3", _TWO),                                                            # CHATGLM3
    ("deepseek-chat", _TWO),                                                       # DEEPSEEK_CHAT
    ("metamath", _TWO),                                                            # METAMATH
    ("yuan2", _TWO),                                                               # YUAN2
]

# Runs inside the FastChat venv: argv[1] = spec JSON path, argv[2] = output path. Writes to the file,
# not stdout (FastChat's build_logger() replaces sys.stdout with a logger).
_PROMPT_SCRIPT = r'''
import asyncio, json, sys
spec = json.load(open(sys.argv[1]))
import fastchat
from fastapi.testclient import TestClient
from fastchat.conversation import SeparatorStyle, conv_templates
from fastchat.serve import base_model_worker, openai_api_server
from fastchat.protocol.openai_api_protocol import ChatCompletionRequest

MODEL, WORKER = "fixture-model", "http://127.0.0.1:1"
client = TestClient(base_model_worker.app)
served = {}


def worker_conv_template(name):
    # A real BaseModelWorker (it makes the template and turns sep_style into an int) behind the real
    # route: the body is byte for byte what a worker started with --conv-template NAME returns.
    if name not in served:
        base_model_worker.worker = base_model_worker.BaseModelWorker(
            "http://127.0.0.1:1", WORKER, "fixture", "/models/" + MODEL, [MODEL], 1, conv_template=name)
        r = client.post("/worker_get_conv_template", json={"model": MODEL})
        assert r.status_code == 200, r.text
        served[name] = r.content
    return json.loads(served[name])


current = {}


async def get_conv(model_name, worker_addr):   # what the API server fetches (and caches) from a worker
    return json.loads(current["raw"])["conv"]


openai_api_server.get_conv = get_conv
cases, covered = [], {}
for name, sets in spec["cases"]:
    body = worker_conv_template(name)
    current["raw"] = served[name]
    style = SeparatorStyle(body["conv"]["sep_style"])
    covered.setdefault(style.name, []).append(name)
    for set_name in sets:
        messages = spec["message_sets"][set_name]
        req = ChatCompletionRequest(model=MODEL, messages=messages)   # as create_chat_completion gets it
        gen = asyncio.run(openai_api_server.get_gen_params(
            req.model, WORKER, req.messages, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            max_tokens=req.max_tokens, echo=False, stop=req.stop))
        cases.append({
            "id": name + "/" + set_name, "template": name, "sep_style": int(style),
            "sep_style_name": style.name, "messages_name": set_name, "messages": messages,
            "prompt": gen["prompt"], "stop": sorted(gen["stop"]), "stop_token_ids": gen["stop_token_ids"],
        })

styles = {s.name: int(s) for s in SeparatorStyle}
out = {
    "about": (
        "FastChat prompt construction, recorded from the real fschat package. templates[T] is the body of "
        "POST /worker_get_conv_template of a model worker started with --conv-template T (sep_style as the "
        "int the JSON carries). Each case applies openai_api_server.get_gen_params to `messages` the way "
        "POST /v1/chat/completions does: system -> set_system_message (the last one wins), user -> "
        "roles[0], assistant -> roles[1], then (roles[1], None) and conv.get_prompt(). `stop` is the set "
        "request.stop | conv.stop_str (order is not meaningful; sorted here) and `stop_token_ids` is "
        "conv.stop_token_ids, as sent to the worker."),
    "generator": "tests/backends/fastchat_env.py generate_prompt_fixtures() "
                 "(python -m tests.backends.fastchat_env fixtures)",
    "fschat_version": fastchat.__version__,
    "sep_styles": styles,
    "sep_styles_covered": {k: covered[k] for k in styles if k in covered},
    "sep_styles_not_covered": [k for k in styles if k not in covered],
    "templates_without_sep_style": sorted(k for k, v in conv_templates.items() if v.sep_style is None),
    "message_sets": spec["message_sets"],
    "templates": {name: json.loads(raw) for name, raw in served.items()},
    "cases": cases,
}
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
    f.write("\n")
'''


def generate_prompt_fixtures(venv: Path, out_path: Path = FIXTURE) -> dict:
    """Runs FastChat's own prompt code in `venv` and writes the fixture JSON to `out_path`; returns it."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path = out_path.with_name(out_path.name + ".spec.tmp")
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    spec_path.write_text(json.dumps({"message_sets": MESSAGE_SETS, "cases": PROMPT_CASES}))
    try:
        r = subprocess.run([str(venv_python(venv)), "-c", _PROMPT_SCRIPT, str(spec_path), str(tmp_out)],
                           capture_output=True, text=True, timeout=300, check=False,
                           env={**os.environ, **_env(1)})
        if r.returncode != 0:
            raise RuntimeError(f"prompt fixture generation failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        tmp_out.replace(out_path)
    finally:
        spec_path.unlink(missing_ok=True)
        tmp_out.unlink(missing_ok=True)
    return json.loads(out_path.read_text())


if __name__ == "__main__":  # python -m tests.backends.fastchat_env [venv | fixtures [OUT]]
    cmd = sys.argv[1] if len(sys.argv) > 1 else "venv"
    if cmd == "venv":
        print(ensure_fastchat_venv())
    elif cmd == "fixtures":
        out = Path(sys.argv[2]) if len(sys.argv) > 2 else FIXTURE
        data = generate_prompt_fixtures(ensure_fastchat_venv(), out)
        print(f"{len(data['cases'])} cases, styles covered: {len(data['sep_styles_covered'])}/"
              f"{len(data['sep_styles'])}, not covered: {data['sep_styles_not_covered']}")
    else:
        sys.exit(f"unknown command {cmd!r}; expected: venv | fixtures [OUT]")
