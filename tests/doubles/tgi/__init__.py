"""The Hugging Face TGI test double, one module per job. Run it as `python -m tests.doubles.tgi_server`; the
wire-format notes and the TGI source citations are in the docstring of tests/doubles/tgi_server.py.

Modules, lower levels first (a module imports only from the ones above it):
  defaults           TGI's defaults, the double's canned texts, integer bounds
  encoding           JSON output (serde_json::to_vec)
  json_parser        JSON parsing with byte positions (serde_json syntax errors)
  deserialize        serde-like type checking of parsed JSON, serde's error texts
  specs              type specs of the request bodies
  errors             InferError, status mapping, JSON responses
  state              the server State (configuration, bookkeeping, counters, gauges)
  metrics            /metrics rendering
  bodies             axum Json extraction (rejections), x_double control, parameters
  model              tokens, stopping criteria, generation plan, validation
  generation         permits/queue/batch, generate_internal, generate_stream_internal
  sse                SSE writer with keep-alive, stream headers
  native_routes      POST / (compat), /generate, /generate_stream, /tokenize
  chat_routes        /v1/chat/completions, /chat_tokenize
  completion_routes  /v1/completions
  invocation_routes  /invocations
  info_routes        health, /info, /v1/models, /metrics, /api-doc/openapi.json
  hook_routes        the tests' /_... hooks
  app                route table and middleware
  cli                arguments and main
"""
