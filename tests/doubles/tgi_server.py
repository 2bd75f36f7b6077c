"""A small real Hugging Face TGI server (text-generation-inference 3.3.x wire format) for the tests.

Run: python -m tests.doubles.tgi_server --port P --model-id ORG/NAME [--max-concurrent-requests N]
     [--max-input-tokens N] [--max-total-tokens N] [--api-key K] [--load-delay S] [--version V]
     [--docker-label L] [--token-delay S] [--legacy-sse]

Every detail below was read from TGI's source at db931fcf (2026-01-08, Cargo version 3.3.6-dev0,
the same router code as the v3.3.6/v3.3.7 images), mostly router/src/{server.rs, lib.rs, chat.rs,
validation.rs, infer/mod.rs}, and from the crates it locks: axum 0.7.9 (SSE framing, JSON
rejections), serde_json 1.0.140 (error texts and positions), serde_path_to_error (error paths),
metrics-exporter-prometheus 0.15.3 (/metrics text).

Behaviour that mirrors TGI:
* Nothing listens for --load-delay seconds (TGI binds only after shards are warm).
* Routes: POST / (compat: one-element array, or SSE with "stream": true), /generate,
  /generate_stream, /v1/chat/completions, /v1/completions, /invocations, /tokenize (API-key
  protected); GET / /health /ping, /info, /v1/models, /metrics and POST /chat_tokenize (public).
  With --api-key the protected routes need `Authorization: Bearer <key>` (compared
  case-insensitively, whole header) else 401 with an EMPTY body. Unknown route -> 404, wrong method
  -> 405, both empty (axum defaults). /vertex (Google feature) is not emulated.
* SSE: `data: <json>\n\n` -- axum 0.7 writes a space after `data:` (TGI >= 2.1; axum 0.6, used up
  to TGI 2.0.x, wrote none: --legacy-sse). OpenAI routes end with `data: [DONE]`, native routes do
  not. `:\n\n` keep-alive after 15 s without an event (axum KeepAlive::default()).
* Request bodies: `Content-Type: application/json` required (415), syntax errors -> 400 and type
  errors -> 422 with axum's text/plain bodies ("Failed to deserialize the JSON body into the target
  type: parameters.top_p: invalid type: string \"x\", expected f32 at line 1 column 37"); serde's
  line/column are reproduced for the common cases, unknown fields (like x_double) are ignored.
* The permit of --max-concurrent-requests is taken with try_acquire BEFORE validation: a request
  beyond the limit gets 429 {"error":"Model is overloaded","error_type":"overloaded"} (non-stream),
  or HTTP 200 and an in-band error (stream): /generate_stream (and POST / stream)
  `data: {"error":"Model is overloaded","error_type":"overloaded"}` then the end;
  chat/completions `data: {"error":{"message":"Model is overloaded","http_status_code":422}}` then
  `data: [DONE]`. Validation and generation errors behave the same way (422/424 non-stream,
  in-band on streams) -- only JSON rejections, completions' `suffix`/batch-size checks and chat
  tool errors fail before a stream starts.
* Validation as validation.rs: temperature <= 0, top_p/typical_p outside (0, 1) (1.0 is rejected),
  top_k <= 0, repetition_penalty <= 0, frequency_penalty outside [-2, 2], max_new_tokens == 0,
  more than 4 stop sequences, top_n_tokens > 5, best_of rules, empty inputs, truncate,
  `inputs` tokens + min(max_new_tokens, 1024) > max_total_tokens (TGI checks only the first
  1024-token chunk), inputs > max_input_tokens. Chat and completions map temperature 0 to greedy;
  chat maps presence_penalty p to repetition_penalty p + 2.
* Finish reasons: native `eos_token|length|stop_sequence`; chat and non-stream completions turn
  eos_token into "stop"; streamed /v1/completions keeps the raw name on its final chunk and sends
  finish_reason "" before it. The EOS token (id 2, "</s>", special) is the last generated token:
  chat deltas show it as content "", streamed completions show its text "</s>".
* /metrics: counters tgi_request_count (chat and completions count twice per request, as in TGI),
  tgi_request_success, tgi_request_failure{err=overloaded|validation|generation|incomplete|dropped};
  gauges tgi_queue_size, tgi_batch_current_size, tgi_batch_current_max_tokens (present once a request
  got that far, like TGI) and tgi_batch_max_total_tokens (from start). Histograms are omitted.

Simplifications (the double has no model):
* Tokens are whitespace-separated words: the prompt length of `inputs` / `prompt` is
  len(text.split()); chat prompts are templated as "<|role|>\\n<content>\\n" per message plus
  "<|assistant|>\\n" (so a message costs 1 + its words, plus 1), tools add the tool prompt and the
  tools' JSON. The answer is "Hello from tgi, this is a streamed answer" split per word (" from"
  keeps its leading space), then EOS; stop sequences are matched on the text as in TGI (and kept).
* Requests beyond 1024 new tokens are not re-queued in chunks; generation just stops at
  max_new_tokens (or max_total_tokens - input when omitted).
* Tool calls: with `tools` the "model" calls the first tool (or tool_choice's) with arguments
  sampled from its JSON schema; the stream goes through a port of chat.rs' ChatState.

Per-request behaviour comes from an extra body field (top level, or inside "parameters"):
"x_double": {"text": "...", "eos": false (no EOS; run to max_new_tokens), "delay": s per token,
"hold": true (wait for POST /_release before the first token, counted in tgi_queue_size),
"hold_after": N (wait after N tokens), "fail_after": N (TGI generation error after N tokens),
"message": "..." (its text), "incomplete": N (the backend stream ends after N tokens without an end:
TGI's "Incomplete generation"), "truncate": N (close the TCP connection after N tokens),
"tool": name / "no_tool", "arguments": {...}}.
Test hooks: GET /_requests (bodies received), GET /_stats, POST /_release (wake held requests),
POST /_control with an x_double object (default for every later request, for clients that cannot add
body fields; {} clears), POST /_unhealthy and /_healthy (health routes -> 503/200), POST /_reset.

The code is the package tests/doubles/tgi/ (one module per job; the map is in its __init__); this
module is only the entry point.
"""

from tests.doubles.tgi.cli import main

if __name__ == "__main__":
    main()
