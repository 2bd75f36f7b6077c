"""A small real Ollama server (native /api and its OpenAI layer) for the gateway's tests.

Run: python -m tests.doubles.ollama_server --port P --models llama3.2,qwen2.5:0.5b [--loaded llama3.2]
         [--load-seconds S] [--max-queue N] [--num-parallel N] [--embed-models nomic-embed-text]
         [--thinking-models M] [--vision-models M] [--keep-alive 5m] [--context-length 4096]
         [--max-loaded 3] [--host-guard] [--name ollama] [--version 0.33.0]

Wire format follows ollama/ollama at commit fb30760 (v0.33.0-rc2): server/routes.go, server/sched.go,
api/types.go, openai/openai.go, middleware/openai.go (backends.md part B §3). JSON is written the way Go's
encoding/json writes it: struct field order, `omitempty`, `<>&` escaped as \\u003c…, float32 shortest
form, RFC3339Nano timestamps, durations in integer nanoseconds.

Behaviour per request comes from a knob object, read from the body field "x_double", else from
options.x_double (the ollama client passes unknown option keys through; real Ollama ignores them),
else from an "X-Double: <json>" header:
  {"text": "...", "chunks": N, "delay": s, "hold": true, "error_after": N, "error": "msg",
   "status": 500, "message": "msg", "truncate": true, "thinking": "...",
   "tool_call": {"name": "get_weather", "arguments": {"city": "Tokyo"}}   (or a list of them)}
Test hooks (never behind the Host guard): GET /_requests (bodies received), GET /_stats, POST /_release
(let held requests go on), POST /_reset.

Scheduling model: installed models come from --models/--embed-models; a request for a model that is
not resident "loads" it (--load-seconds before the first byte; it shows in /api/ps from the start of the
load), keep_alive sets how long it stays after its last request (0: unload when idle, negative: forever,
expires_at ~292 years ahead as in Go), a num_ctx different from the resident runner's reloads it.
Each resident model has --num-parallel slots; a request that has to wait (for a load or a slot) when
--max-queue requests are already waiting gets 503 "server busy…". (Real Ollama bounds its scheduler's
pending channel, OLLAMA_MAX_QUEUE, and lets requests for an already loaded model wait on the runner's
slots unbounded; this double bounds every wait, which is the observable behaviour tests need.)

The implementation is the package tests/doubles/ollama/ (its __init__ lists the modules).
"""

from tests.doubles.ollama.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
