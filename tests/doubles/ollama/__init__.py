"""The Ollama test double as a package of small modules; run it as `python -m tests.doubles.ollama_server`.

The wire-format notes (ollama/ollama commit, Go JSON encoding rules, knobs, test hooks, scheduling model)
are in the docstring of tests/doubles/ollama_server.py. Modules, lowest layer first (each imports only
from the ones above it):
  gojson          Go's encoding/json output (floats, strings, timestamps)
  binding         Go-style errors, request binding, api.Duration, api.Options.FromMap
  catalog         model names and the installed-model catalogue
  scheduler       resident runners, keep_alive, slots, the bounded queue
  tokens          text -> token pieces, stop/num_predict cuts, embedding vectors
  responses       native response objects and the generation stream
  handling        shared request handling (knobs, request log, validation + scheduling, gin JSON)
  api_inference   /api/chat, /api/generate
  api_embed       /api/embed, /api/embeddings
  api_models      /, /api/version, /api/tags, /api/ps, /api/show
  openai_convert  OpenAI <-> native conversions, SSE chunk writers, OpenAI errors
  openai_routes   /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models
  middleware      Host guard, gin's 404/405
  hooks           test hooks /_requests, /_stats, /_release, /_reset
  app             app wiring (state, preload, routes)
  cli             argument parsing and main
"""
