"""The GPU sizing estimator (gateway/recipes/sizing.py) against published figures, GGUF files whose tensor
bytes are known exactly, and `llm-gateway size` run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.recipes import size_model
from gateway.recipes.architectures import SizingError, resolve
from gateway.recipes.gpus import parse_gpus
from gateway.recipes.sizing import GiB, SizingRequest, estimate
from tests.backends.llamacpp import build_vocab, write_tiny_gguf

ROOT = Path(__file__).resolve().parent.parent


def size(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "size", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


def size_json(*args: str) -> dict[str, Any]:
    r = size(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def close(value: float, expected: float, tol: float) -> bool:
    return abs(value - expected) <= tol * expected


# -- weights against published figures ---------------------------------------------------------------
def test_7b_fp16_is_14gb_and_fp8_7gb() -> None:
    # seed 001:438: "一个7B模型从FP16的14GB降到FP8的7GB" (a 7B model: 14 GB at FP16, 7 GB at FP8)
    flags = ["--model", "my-7b", "--params", "7B", "--layers", "32", "--kv-heads", "32", "--head-dim", "128"]
    fp16 = size_json(*flags, "--format", "FP16")
    fp8 = size_json(*flags, "--format", "fp8")
    assert close(fp16["weights_bytes"], 14e9, 0.01)
    assert close(fp8["weights_bytes"], 7e9, 0.01)
    # and a real 7B of the table (Mistral-7B, 7.24B params): still "≈ 14 GB" within 4 %
    assert close(size_json("--model", "mistralai/Mistral-7B-Instruct-v0.2", "--format", "fp16")["weights_bytes"],
                 14e9, 0.04)


def test_llama3_70b_bf16_is_140gb() -> None:
    # seed 001:442: "跑LLaMa3 70B，BF16和FP16的内存占用都是140GB" (70B at BF16/FP16 takes 140 GB)
    out = size_json("--model", "META-LLAMA/Meta-Llama-3-70B-Instruct", "--format", "BF16")
    assert close(out["weights_bytes"], 140e9, 0.02)


def test_llama2_13b_gptq_int4_is_7_26gb_with_group_overhead() -> None:
    # seed 004:297: Llama-2-13B-chat "全精度版本的大小为 26G ... GPTQ ... INT4 ... 7.26G";
    # the FP16 embeddings + 4.156 bpw (group 128) body give it; a flat 4 bpw would be 6.5 GB
    gptq = size_json("--model", "meta-llama/Llama-2-13b-chat-hf", "--format", "gptq")
    assert close(gptq["weights_bytes"], 7.26e9, 0.02)
    assert close(size_json("--model", "meta-llama/Llama-2-13b-chat-hf", "--format", "fp16")["weights_bytes"],
                 26e9, 0.02)


@pytest.mark.parametrize("model, published", [
    # TheBloke/Mistral-7B-Instruct-v0.2-GGUF README table: mistral-7b-instruct-v0.2.Q4_K_M.gguf 4.37 GB
    ("mistralai/Mistral-7B-Instruct-v0.2", 4.37e9),
    # TheBloke/Llama-2-7B-GGUF README table: llama-2-7b.Q4_K_M.gguf 4.08 GB
    ("meta-llama/Llama-2-7b-hf", 4.08e9),
    # Qwen/Qwen2.5-7B-Instruct-GGUF: qwen2.5-7b-instruct-q4_k_m.gguf 4.68 GB
    ("Qwen/Qwen2.5-7B-Instruct", 4.68e9),
])
def test_q4_k_m_files_of_7b_models(model: str, published: float) -> None:
    out = size_json("--model", model, "--format", "q4_k_m")
    assert out["engine"] == "llamacpp"
    assert close(out["weights_bytes"], published, 0.03), out["weights_bytes"] / 1e9


# -- KV cache ------------------------------------------------------------------------------------------
def test_llama31_8b_kv_cache_is_128kib_per_token_at_fp16() -> None:
    # 2 x 32 layers x 8 KV heads x 128 head dim x 2 B = 131072 B (anchors-ops.md §7 worked numbers;
    # config.json of meta-llama/Llama-3.1-8B-Instruct: 32 layers, 8 key_value_heads, head 4096/32)
    out = size_json("--model", "meta-llama/llama-3.1-8b-instruct", "--context", "8192", "--slots", "2")
    assert out["kv_bytes_per_token"] == 128 * 1024
    assert out["kv_cache_bytes"] == 128 * 1024 * 8192 * 2  # 2 GiB: context x slots
    q8 = size_json("--model", "meta-llama/llama-3.1-8b-instruct", "--context", "8192", "--format", "q8_0",
                   "--cache-type", "q8_0")
    assert q8["kv_cache_bytes"] == 128 * 1024 * 8192 * 34 // 32 // 2  # ggml q8_0: 34 bytes per 32 values
    # vLLM --kv-cache-dtype auto follows the model's dtype
    fp32 = size_json("--model", "meta-llama/llama-3.1-8b-instruct", "--context", "8192", "--format", "fp32",
                     "--cache-type", "auto")
    assert fp32["kv_bytes_per_token"] == 256 * 1024 and fp32["cache_type"] == "f32"


def test_sliding_window_and_mla() -> None:
    mistral01 = resolve("mistralai/Mistral-7B-v0.1")  # sliding_window 4096 on all 32 layers
    e = estimate(SizingRequest(mistral01, context=32768))
    assert e.kv_cache_bytes == 128 * 1024 * 4096
    gemma = resolve("google/gemma-2-9b-it")  # window 4096 on 21 of 42 layers, head_dim 256, 8 KV heads
    per_layer = 2 * 8 * 256 * 2
    assert estimate(SizingRequest(gemma, context=8192)).kv_cache_bytes == per_layer * (21 * 8192 + 21 * 4096)
    ds = resolve("deepseek-ai/DeepSeek-V3")  # MLA: (kv_lora_rank 512 + rope 64) x 2 B x 61 layers
    assert estimate(SizingRequest(ds, context=1000, format="q4_k_m")).kv_cache_bytes == 576 * 2 * 61 * 1000


# -- fits ------------------------------------------------------------------------------------------------
def test_chatglm_6b_int4_fits_in_6gb() -> None:
    # seed 002:235 / 003:12: ChatGLM-6B "INT4 量化级别下最低只需 6GB 显存" (INT4: 6 GB of GPU memory at least),
    # served by transformers (FastChat / its own cli_demo) at its 2048-token context
    out = size_json("--model", "THUDM/chatglm-6b", "--format", "INT4", "--engine", "transformers",
                    "--gpus", "1x6GiB")
    assert out["context"] == 2048
    assert out["fits"] is True
    assert 5 * GiB < out["total_bytes"] <= 6 * GiB  # fits, but not with room for FP16's 12 GB
    fp16 = size_json("--model", "THUDM/chatglm-6b", "--format", "fp16", "--engine", "transformers",
                     "--gpus", "1x6GiB")
    assert fp16["fits"] is False
    assert any("--format int4 fits" in a for a in fp16["advice"]), fp16["advice"]


def test_vllm_preallocation_reports_kv_tokens() -> None:
    # vllm/v1/worker/gpu_worker.py determine_available_memory: KV = total x gpu_memory_utilization - peak
    full = size_json("--model", "meta-llama/Llama-3.1-8B-Instruct", "--context", "8192", "--gpus", "1x24GiB")
    half = size_json("--model", "meta-llama/Llama-3.1-8B-Instruct", "--context", "8192", "--gpus", "1x24GiB",
                     "--gpu-memory-utilization", "0.8")
    g = full["per_gpu"][0]
    assert g["budget_bytes"] == int(24 * GiB * 0.9)
    pool = g["budget_bytes"] - g["weights_bytes"] - g["overhead_bytes"]
    assert full["kv_cache_tokens"] == pool // (128 * 1024)
    # 0.1 of 24 GiB less budget = 2.4 GiB less KV = 19660 tokens fewer
    assert full["kv_cache_tokens"] - half["kv_cache_tokens"] == pytest.approx(0.1 * 24 * GiB / (128 * 1024), abs=1)
    assert full["fits"] is True and any("43" in a and "tokens" in a for a in full["advice"])


def test_recipe_entry_point() -> None:
    # what a recipe calls before a launch: the same figures as the CLI, from a model id and a GPU spec
    e = size_model("qwen/qwen2.5-7b-instruct", gpus="2x24GiB", engine="tgi", context=4096, slots=4)
    assert e.fits and len(e.per_gpu) == 2 and e.per_gpu[0].budget_bytes == 24 * GiB  # TGI: fraction 1.0
    assert e.kv_cache_bytes == 2 * 28 * 4 * 128 * 2 * 4096 * 4
    assert e.as_dict() == size_json("--model", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "2x24GiB", "--engine", "tgi",
                                    "--context", "4096", "--slots", "4")
    with pytest.raises(SizingError, match="bad --gpus item"):
        size_model("Qwen/Qwen2.5-7B-Instruct", gpus="lots")


def test_vllm_batch_defaults_follow_the_gpu_size() -> None:
    # vllm/engine/arg_utils.py get_batch_defaults: 2048 batched tokens / 256 seqs, 8192 / 1024 on >= 70 GiB GPUs;
    # the profile run's activations (tokens x 2 B x (4 hidden + 3 intermediate)) and fp32 logits (seqs x vocab)
    arch = resolve("meta-llama/Llama-3.1-8B-Instruct")
    small = estimate(SizingRequest(arch, context=8192, gpus=[48 * GiB])).overhead_bytes
    big = estimate(SizingRequest(arch, context=8192, gpus=[80 * GiB])).overhead_bytes
    assert big - small == (8192 - 2048) * 2 * (4 * 4096 + 3 * 14336) + (1024 - 256) * 128256 * 4


def test_tensor_parallel_splits_weights_and_kv() -> None:
    one = estimate(SizingRequest(resolve("Qwen/Qwen2.5-72B-Instruct"), context=8192, gpus=[80 * GiB]))
    two = estimate(SizingRequest(resolve("Qwen/Qwen2.5-72B-Instruct"), context=8192, gpus=[80 * GiB] * 2))
    assert not one.fits and two.fits
    assert two.per_gpu[0].weights_bytes == one.weights_bytes // 2
    assert two.per_gpu[0].kv_cache_bytes == one.kv_cache_bytes // 2  # 8 KV heads: 4 per rank
    assert any("--gpus 2x80GiB fits" in a for a in one.advice)
    # 64 heads over 3 GPUs: vLLM refuses to start, whatever the memory says
    three = estimate(SizingRequest(resolve("Qwen/Qwen2.5-72B-Instruct"), context=8192, gpus=[80 * GiB] * 3))
    assert not three.fits and any("64 attention heads" in a and "use 1, 2, 4, 8" in a for a in three.advice)


def test_advice_when_it_does_not_fit() -> None:
    out = size_json("--model", "meta-llama/Meta-Llama-3-70B-Instruct", "--format", "q4_k_m", "--context", "8192",
                    "--gpus", "1x24GiB")
    assert out["fits"] is False and out["engine"] == "llamacpp"
    advice = " | ".join(out["advice"])
    assert "--format q2_k fits" not in advice  # 70B at Q2_K (~26 GB) still does not fit 24 GiB
    assert "--gpus 2x24GiB fits" in advice
    assert "--gpu-layers" in advice
    longest = size_json("--model", "meta-llama/Llama-3.1-8B-Instruct", "--gpus", "1x24GiB")  # its 131072 tokens
    assert longest["context"] == 131072 and longest["fits"] is False
    assert any(a.startswith("shorter context: --context") for a in longest["advice"])
    # 16 GiB of KV: not even INT4 weights make room; at 65536 tokens (8 GiB) FP8 does
    assert not any(a.startswith("smaller quantization") for a in longest["advice"])
    none = size_json("--model", "deepseek-ai/DeepSeek-V3", "--format", "int4", "--context", "4096", "--gpus",
                     "1x8GiB")  # ~350 GB even at INT4: not on 16 such GPUs either
    assert none["fits"] is False and none["advice"][-1].startswith("nothing smaller fits these GPUs")
    long = size_json("--model", "meta-llama/Llama-3.1-8B-Instruct", "--gpus", "1x24GiB", "--context", "65536")
    assert "smaller quantization: --format fp8 fits" in " | ".join(long["advice"])


def test_partial_offload_and_the_half_of_the_model_rule() -> None:
    arch = resolve("meta-llama/Meta-Llama-3-70B-Instruct")
    e = estimate(SizingRequest(arch, format="q4_k_m", context=4096, gpus=[24 * GiB], gpu_layers=30))
    assert e.fits
    assert e.per_gpu[0].weights_bytes == int(e.weights_bytes * 30 / 80)
    assert e.ram_bytes == int((e.weights_bytes + e.kv_cache_bytes) * 50 / 80)
    assert any(a.startswith("partial offload") and "slow" in a for a in e.advice)  # 37 % < half
    e48 = estimate(SizingRequest(arch, format="q4_k_m", context=4096, gpus=[24 * GiB], gpu_layers=42))
    assert not any("slow" in a for a in e48.advice)  # 52 %: not below half


def test_moe_loads_all_experts() -> None:
    # seed 000:19: Mixtral 加载消耗的硬件与 ~40B 的模型相当; 001:639: 467 亿参数 (46.7B)
    out = size_json("--model", "mistralai/Mixtral-8x7B-Instruct-v0.1", "--format", "bf16")
    assert close(out["weights_bytes"], 46.7e9 * 2, 0.01)
    assert any(a.startswith("MoE: all 8 experts") for a in out["advice"])


# -- GGUF and config.json files ---------------------------------------------------------------------------
def test_tiny_gguf_weights_equal_its_tensor_bytes(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")  # 2 layers, n_embd 64, 4 heads, 2 KV heads, n_ff 128, F32
    v, e, L, ff, kv = len(build_vocab("small")[0]), 64, 2, 128, 2 * 16
    tensor_bytes = 4 * (2 * v * e + e + L * (e + e * e + 2 * kv * e + e * e + e + 3 * ff * e))
    out = size_json("--model", str(path), "--context", "512")
    assert out["weights_bytes"] == tensor_bytes
    assert out["format"] == "f32" and out["engine"] == "llamacpp"
    assert out["kv_bytes_per_token"] == 2 * L * 2 * 16 * 2


def test_mixed_gguf_uses_real_tensor_bytes_not_params_times_bpw(tmp_path: Path) -> None:
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(tmp_path / "mixed.gguf"), "llama")
    for k, val in (("block_count", 1), ("embedding_length", 256), ("context_length", 1024)):
        getattr(w, f"add_{k}")(val)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    emb = rng.standard_normal((4096, 256), dtype=np.float32).astype(np.float16)  # F16 token embeddings
    w.add_tensor("token_embd.weight", emb)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        q = quantize(rng.standard_normal((256, 256), dtype=np.float32), T.Q8_0)
        w.add_tensor(f"blk.0.{name}.weight", q, raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    exact = 4096 * 256 * 2 + 4 * 256 * 256 * 34 // 32
    e = estimate(SizingRequest(resolve(str(tmp_path / "mixed.gguf")), context=1024))
    assert e.format == "q8_0" and e.weights_bytes == exact
    assert e.kv_bytes_per_token == 2 * 1 * 4 * 64 * 2
    # asked for another format, the file's bytes no longer apply: params x that format's bpw
    assert estimate(SizingRequest(resolve(str(tmp_path / "mixed.gguf")), format="f16")).weights_bytes == \
        (4096 * 256 + 4 * 256 * 256) * 2


def test_config_json_directory(tmp_path: Path) -> None:
    # the figures of Qwen/Qwen2.5-7B-Instruct's config.json
    cfg = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
           "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "vocab_size": 152064,
           "max_position_embeddings": 32768, "sliding_window": 131072, "use_sliding_window": False,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve(str(tmp_path))
    assert (arch.layers, arch.kv_heads, arch.head_dim, arch.sliding_window) == (28, 4, 128, None)
    assert close(arch.params, 7.62e9, 0.01)  # hub page: 7.62B params
    out = size_json("--model", str(tmp_path), "--context", "1000")
    assert out["format"] == "bf16" and out["kv_bytes_per_token"] == 2 * 28 * 4 * 128 * 2


# -- input handling ---------------------------------------------------------------------------------------
def test_gpu_specs() -> None:
    assert parse_gpus("2x24GiB") == [24 * GiB] * 2
    assert parse_gpus("24GiB,16GiB") == [24 * GiB, 16 * GiB]
    assert parse_gpus("1x80GB") == [80 * 10**9]
    assert parse_gpus("2x24G") == [24 * GiB] * 2
    for bad in ("", "2xfoo", "24", "0x24GiB", "24PiB"):
        with pytest.raises(SizingError):
            parse_gpus(bad)


@pytest.mark.parametrize("args, message", [
    (["--model", "nosuch/model"], "unknown model"),
    (["--model", "Qwen/Qwen2.5-7B-Instruct", "--format", "q9_z"], "unknown format"),
    (["--model", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "2xbig"], "bad --gpus item"),
    (["--model", "Qwen/Qwen2.5-7B-Instruct", "--context", "0"], "must be positive"),
    (["--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu-memory-utilization", "1.5"], "gpu-memory-utilization"),
    (["--model", "Qwen/Qwen2.5-7B-Instruct", "--format", "awq", "--engine", "llamacpp"], "GGUF"),
    (["--model", "Qwen/Qwen2.5-7B-Instruct", "--params", "lots"], "bad parameter count"),
    (["--model", "/nonexistent/dir/model.gguf"], "unknown model"),
    (["--model", "{tmp}/junk.gguf"], "cannot read GGUF"),
    (["--model", "{tmp}/config.json"], "cannot read"),
    (["--model", "Qwen/Qwen2.5-7B-Instruct", "--context", "lots"], "invalid int value"),
    (["--format", "fp16"], "required: --model"),
    (["--model", "{tmp}/st"], "cannot read safetensors header"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "config.json").write_text(
        json.dumps({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}))
    (tmp_path / "st" / "model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    r = size(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_gpu_indices_without_nvml_ask_for_sizes(tmp_path: Path) -> None:
    # a `pynvml` that cannot be imported, first on the path, stands in for a machine without nvidia-ml-py
    (tmp_path / "pynvml.py").write_text("raise ImportError('no NVML here')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = size("--model", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "0,1", env=env)
    assert r.returncode == 2 and "nvidia-ml-py" in r.stderr and "--gpus 2x24GiB" in r.stderr


def test_human_output_shows_the_breakdown() -> None:
    r = size("--model", "Qwen/Qwen2.5-7B-Instruct", "--context", "4096", "--gpus", "1x24GiB")
    assert r.returncode == 0, r.stderr
    for word in ("weights", "KV cache", "overhead", "total", "GPU 0:", "fits: yes"):
        assert word in r.stdout
    r = size("--model", "Qwen/Qwen2.5-7B-Instruct", "--context", "4096", "--gpus", "1x16GiB")
    assert r.returncode == 0 and "fits: NO" in r.stdout and "DOES NOT FIT" in r.stdout
    assert "- smaller quantization: --format fp8 fits" in r.stdout


def test_gpu_indices_read_sizes_through_nvml(tmp_path: Path) -> None:
    # a stand-in `pynvml` with the nvidia-ml-py calls size_cli makes: device 0 has 24 GiB, device 1 16 GiB
    (tmp_path / "pynvml.py").write_text(
        "class NVMLError(Exception):\n    pass\n"
        "class _Mem:\n    def __init__(self, total):\n        self.total = total\n"
        "def nvmlInit():\n    pass\n"
        "def nvmlShutdown():\n    pass\n"
        "def nvmlDeviceGetHandleByIndex(i):\n"
        "    if i > 1:\n        raise NVMLError('Invalid Argument')\n    return i\n"
        "def nvmlDeviceGetMemoryInfo(h):\n    return _Mem([24 << 30, 16 << 30][h])\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = size("--model", "Qwen/Qwen2.5-7B-Instruct", "--format", "q4_k_m", "--context", "4096", "--gpus", "0,1",
             "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [g["total_bytes"] for g in json.loads(r.stdout)["per_gpu"]] == [24 * GiB, 16 * GiB]
    r = size("--model", "Qwen/Qwen2.5-7B-Instruct", "--gpus", "0,5", env=env)
    assert r.returncode == 2 and "NVML cannot read the GPUs (Invalid Argument)" in r.stderr


@pytest.mark.llamacpp
def test_real_llama_server_allocates_what_the_estimate_says(llama_binary: Path, spawn: Any, tmp_path: Path) -> None:
    """The estimate's weights and KV cache against the buffers a real llama-server allocates for the same
    GGUF, context and slots (its log at -lv 4: "model buffer size", "llama_kv_cache: size", 2 decimals in MiB)."""
    import re

    from tests.backends.llamacpp import server_args, wait_ready
    from tests.procs import free_port

    model = write_tiny_gguf(tmp_path / "kv.gguf", n_layer=4, n_embd=256, n_head=8, n_head_kv=2, n_ctx_train=8192)
    port = free_port()
    # -c is llama.cpp's total: 2 slots of 4096 tokens; -lv 4 prints the buffer sizes
    proc = spawn.proc(server_args(llama_binary, model, port, ctx=8192, parallel=2, threads=1, extra=["-lv", "4"]),
                      "llama-sizing")
    wait_ready(proc, f"http://127.0.0.1:{port}", timeout=60)
    log = proc.output()
    kv_mib = float(re.search(r"llama_kv_cache: size =\s*([\d.]+) MiB", log).group(1))  # type: ignore[union-attr]
    model_mib = float(re.search(r"model buffer size =\s*([\d.]+) MiB", log).group(1))  # type: ignore[union-attr]
    e = estimate(SizingRequest(resolve(str(model)), context=4096, slots=2))
    assert e.kv_cache_bytes == 2 * 4 * 2 * 32 * 8192 * 2  # 2 x layers x KV heads x head dim x tokens x f16
    assert abs(e.kv_cache_bytes / (1 << 20) - kv_mib) <= 0.005, (e.kv_cache_bytes, kv_mib)
    assert abs(e.weights_bytes / (1 << 20) - model_mib) <= 0.005, (e.weights_bytes, model_mib)


def test_chatglm_6b_config_json(tmp_path: Path) -> None:
    # THUDM/chatglm-6b config.json as published (no tie_word_embeddings key: transformers ties the head;
    # a plain GELU MLP of 2 matrices): 6.2B params per its model card
    cfg = {"architectures": ["ChatGLMModel"], "model_type": "chatglm", "hidden_size": 4096,
           "inner_hidden_size": 16384, "max_sequence_length": 2048, "num_attention_heads": 32, "num_layers": 28,
           "position_encoding_2d": True, "torch_dtype": "float16", "vocab_size": 130528}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve(str(tmp_path / "config.json"))
    table = resolve("THUDM/chatglm-6b")
    assert (arch.layers, arch.kv_heads, arch.head_dim, arch.vocab, arch.intermediate, arch.max_context) == \
        (28, 32, 128, 130528, 16384, 2048)
    assert arch.tied_embeddings and close(arch.params, 6.2e9, 0.01) and close(table.params, arch.params, 0.01)


def test_hf_directory_counts_its_safetensors_exactly(tmp_path: Path) -> None:
    from tests.backends.hf_model import write_tiny_llama

    d = write_tiny_llama(tmp_path / "tiny-hf", vocab_size=512, hidden=64, layers=2, heads=4, kv_heads=2)
    V, H, L, hd, I = 512, 64, 2, 32, 128  # head_dim max(64 // 4, 32); intermediate 2 x hidden  # noqa: E741
    elements = 2 * V * H + H + L * (2 * H + 4 * hd * H * 2 + 2 * 2 * hd * H + 3 * I * H)
    # a config.json without intermediate_size: a shape formula would guess 4 x hidden, the headers know
    cfg = json.loads((d / "config.json").read_text())
    del cfg["intermediate_size"], cfg["torch_dtype"]
    (d / "config.json").write_text(json.dumps(cfg))
    out = size_json("--model", str(d), "--context", "512")
    assert out["format"] == "fp32" and out["weights_bytes"] == elements * 4
    assert out["kv_bytes_per_token"] == 2 * L * 2 * hd * 2
    assert estimate(SizingRequest(resolve(str(d)), format="bf16")).weights_bytes == elements * 2


def test_readme_example_is_what_the_command_prints() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Sizing\n"):]
    block = section[section.index("```\n$ llm-gateway size ") + 4:]
    block = block[:block.index("```")]
    command, expected = block.split("\n", 1)
    r = size(*command.split()[3:])
    assert r.returncode == 0 and r.stdout == expected


def test_sliding_window_layers_from_config_and_gguf(tmp_path: Path) -> None:
    import gguf

    # google/gemma-2-9b-it config.json figures: window 4096 on every other layer (GeGLU counts as gated)
    gemma2 = {"model_type": "gemma2", "num_hidden_layers": 42, "hidden_size": 3584, "num_attention_heads": 16,
              "num_key_value_heads": 8, "head_dim": 256, "sliding_window": 4096, "intermediate_size": 14336,
              "vocab_size": 256000, "hidden_act": "gelu_pytorch_tanh", "max_position_embeddings": 8192}
    (tmp_path / "config.json").write_text(json.dumps(gemma2))
    arch = resolve(str(tmp_path / "config.json"))
    assert (arch.sliding_window, arch.swa_layers) == (4096, 21) and close(arch.params, 9.24e9, 0.01)
    # newer configs list each layer's kind
    types = ["sliding_attention"] * 5 + ["full_attention"]
    (tmp_path / "config.json").write_text(json.dumps({**gemma2, "model_type": "x", "num_hidden_layers": 6,
                                                      "layer_types": types}))
    assert resolve(str(tmp_path / "config.json")).swa_layers == 5
    # a GGUF: llama.cpp's gemma2 has no pattern key (it alternates); an explicit per-layer array wins
    for name, pattern, expected in (("gemma2", None, 2), ("llama", [True, True, False, True], 3)):
        w = gguf.GGUFWriter(str(tmp_path / f"{name}.gguf"), name)
        w.add_block_count(4)
        w.add_embedding_length(64)
        w.add_head_count(4)
        w.add_sliding_window(128)
        if pattern:
            w.add_array(f"{name}.attention.sliding_window_pattern", pattern)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        a = resolve(str(tmp_path / f"{name}.gguf"))
        assert (a.sliding_window, a.swa_layers) == (128, expected), name
        kv = estimate(SizingRequest(a, context=1024, format="f32")).kv_cache_bytes
        assert kv == 2 * 4 * 16 * 2 * ((4 - expected) * 1024 + expected * 128)
