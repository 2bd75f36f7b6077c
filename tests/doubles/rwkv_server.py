"""A small real RWKV-Runner `backend-python` server (legacy engine) for the gateway's tests.

Run: python -m tests.doubles.rwkv_server --port P [--load-seconds S] [--preload PATH]
     [--ping-seconds S] [--text TEXT] [--token-delay S] [--device-name NAME]
     [--embedding-dim N | --embedding-shape H,N,N] [--exit-kills]

Every detail below was read from RWKV-Runner's source at 64269f0 (release v1.9.11:
backend-python/{main.py, global_var.py, routes/completion.py, routes/config.py, routes/misc.py,
routes/schema.py, utils/rwkv.py, utils/llama.py}) and its pinned web stack (fastapi 0.109.1,
pydantic 2.4.2, sse-starlette 1.6.5, uvicorn 0.23.2), and compared with recordings of that real app
run with a tiny random-weight model (tests/fixtures/rwkv_recordings/, tests/test_rwkv_recordings.py).

Behaviour that mirrors RWKV-Runner:
* GET / -> {"Hello":"World!"}; GET /status -> {"status":0|2|3,"pid":N,"device_name":"CPU"}
  (0 Offline, 2 Loading, 3 Working). No model at start (unless --preload PATH).
* POST /switch-model {model, strategy, tokenizer?, customCuda?, deploy?}: body validated first (422),
  then 403 {"detail":"Forbidden"} in deploy mode, then 304 with an empty body while a load runs.
  Otherwise: unload (status 0, model None), `model: ""` -> "success"; else status 2 for
  --load-seconds, then "success" and status 3. The file is looked up like `get_model_path` (absolute;
  else cwd, its parent, each + build/bin); `.gguf` files are "llama.cpp" models, anything else gets
  `.pth` appended when missing, as rwkv_pip does before torch.load. A missing file -> 500
  {"detail":"failed to load: [Errno 2] No such file or directory: 'models/x.pth'"} (gguf:
  "failed to load: Model path does not exist: x.gguf") and status 0. The model's name is the file
  stem. `deploy: true` then locks /switch-model and /exit (403). The load continues when the client
  goes away (the real handler runs in a thread).
* POST /update-config (sampling fields) -> "success"; they become server-side defaults.
* Chat (/chat/completions, /v1/chat/completions) and completions (/completions, /v1/completions):
  pydantic-2.4-style 422 {"detail":[...]} first (range limits max_tokens 1..102400, temperature 0..3,
  top_p 0..1, presence/frequency -2..2, penalty_decay 0.99..0.999, top_k 0..100; an explicit null
  for a non-Optional field such as max_tokens/temperature/stream is a 422 too; message content must
  be a string: content-part arrays are 422 with one error list per union member), then 400
  {"detail":"model not loaded"} unless a model is loaded, then (chat) 400 "messages not found".
  The request's `model` is ignored. Unknown fields are ignored.
* Chat prompt: chat_template (v5+): "User: ...", "Assistant: ...", "System: ...",
  "Observation: ..." joined by "\\n\\n", ending "Assistant:". Stop list for .pth (TextRWKV) models:
  omitted -> the 11 default stops; null -> the defaults too; a string s -> [s]; a list as given;
  and "\\n\\nUser" / "\\n\\nAssistant" (first token of user/assistant name) are always appended.
  For .gguf models the default list is dropped (stop None) unless the name contains "rwkv".
  Completions have no default stop; prompt null/""/[] -> "\\n", a list -> its first element.
* Generation = utils/rwkv.py AbstractRWKV.generate: tokens are taken one by one from a fixed text
  (default "Hello there.\\n\\nA second paragraph follows.", tokens "Hello"," there.","\\n\\n","A",...:
  runs of newlines, and words with their leading space); after each token the stop strings are
  searched in the whole response: on a hit the response is cut before it and the stop token yields
  an EMPTY delta (so a stream has already sent "\\n\\n" that the non-stream content lacks, exactly as
  the real server with a real tokenizer); completion_tokens counts the stop token. max_tokens
  (default 500) cuts silently. finish_reason is ALWAYS "stop". prompt_tokens = tokens of the prompt
  (same tokenizer); 0 for .gguf models (utils/llama.py never counts them).
* ONE global lock (legacy engine): a request waits polling every 100 ms, unbounded, no FIFO; the
  waiting stops when the client goes away. Embeddings take the same lock.
* Exceptions during generation are printed and the request finishes normally: 200, partial or
  empty content, usage so far (all zero when it failed before the first token), finish "stop".
* Non-stream: {"object","model","choices":[{"message":{"role","content"},"index","finish_reason"}],
  "usage"} -- no id, no created; compact JSON, UTF-8 as is (starlette JSONResponse).
* Stream (sse-starlette 1.6.5 EventSourceResponse): status 200 and headers at once (also while the
  request still waits for the lock), `data: <json.dumps(chunk)>\\r\\n\\r\\n` (default separators,
  ensure_ascii), no role chunk, chunks without id/created, a final {"delta":{}} (completions:
  {"text":""}) chunk with finish "stop", then `data: [DONE]\\r\\n\\r\\n`; a comment
  `: ping - <utc datetime>\\r\\n\\r\\n` every --ping-seconds (15 like sse-starlette) from the start of
  the response. No usage in streams.
* GET /models, /v1/models: the loaded model (or "rwkv") + the fake gpt-3.5-turbo and
  text-davinci-003 cards. GET /models/{id}: fake cards by id; any id containing "rwkv" -> the
  loaded model's card; else 404 {"detail":{"error":{...,"code":"model_not_found"}}}.
* POST /embeddings (+ /v1/embeddings, /engines/text-embedding-ada-002/embeddings, /v1/engines/...):
  .pth models only (400 "model not support embedding" for .gguf), 400 "input not found" for
  ""/[]/[[]]; {"object":"list","data":[{"object":"embedding","index":i,"embedding":[...]}],
  "model":<name>,"usage":{"prompt_tokens","total_tokens"}}; encoding_format "base64" -> float32 LE.
  The vector is model_state[-11]: flat for v4 models (--embedding-dim N), but a nested
  (heads, head_size, head_size) list for v5+ ones (--embedding-shape H,N,N; base64 flattens it).
* POST /exit: 403 in deploy mode; otherwise the real server kills itself. The double records the
  call (GET /_stats "exit_calls") and drops the connection without an answer, staying up (with
  --exit-kills it really exits).
* Unknown route -> 404 {"detail":"Not Found"}, wrong method -> 405 {"detail":"Method Not Allowed"};
  `server: uvicorn` header.

* A token's delta is yielded only when it decodes without U+FFFD (utils/rwkv.py:371): a character
  beyond the BMP (emoji) is two byte tokens here, so one chunk stands for two tokens. A natural end
  yields an empty delta, a cut at max_tokens none.
* Given tools (an RWKV model), a stream's text is held back until judged "common" (> 60 characters,
  4 line feeds, > 44 without a code fence), then sent as one chunk; unjudged, whole at the end.
* A model loaded with an `albatross ...`/`chirrup ...` strategy takes no lock and streams compact
  JSON chunks (`data: {...}\r\n\r\n`, no pings, no empty last delta: eval_albatross).
* "x_double": {"prefill_block": s} blocks the event loop s seconds before the first token, as the
  legacy engine's synchronous prefill does: /status answers nothing meanwhile.

Simplifications: no tool-call parsing (text that looks like a call stays text; the tools' system
prompt is not added), no state cache (so prompt_tokens is never under-counted), Albatross generates
whole `tokenize` tokens without its batching, token-id inputs of embeddings count one token per id
(the real server decodes them with tiktoken first), the event loop is blocked only by prefill_block
(the real generation also blocks it per token).

Per-request behaviour comes from an extra body field (ignored by the real server):
"x_double": {"hold": true (after the first token, keep generating -- holding the lock -- until
POST /_release), "delay": s per token, "fail": true (generation raises before the first token),
"fail_at": N (raises after N tokens), "text": "..." (the answer)}; on /switch-model:
{"load_seconds": s}.
Test hooks: GET /_requests (every body received, with the effective stop list and prompt),
GET /_stats (in_flight, max_in_flight = max concurrent generations, waiting, max_waiting,
cancelled, completed, failed, pings, exit_calls, received, requests, generations [start/end
times]), POST /_release (let held generations go on; sticky until /_reset), POST /_reset.

The code is the package tests/doubles/rwkv/ (one module per job, listed in its __init__); this module
is only the entry point.
"""

from __future__ import annotations

from tests.doubles.rwkv.app import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
