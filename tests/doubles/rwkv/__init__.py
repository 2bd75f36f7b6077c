"""The RWKV-Runner `backend-python` test double, one module per job.

The wire-format notes and their citations (what each route does, and where in RWKV-Runner's source
it was read) are the docstring of tests/doubles/rwkv_server.py, the entry point:
python -m tests.doubles.rwkv_server --port P ...

tokens       the fake tokenizer, the default answer text and stop list
responses    JSON responses and the {"detail": ...} error shape
validation   generic validators with pydantic 2.4's error shapes
schemas      RWKV-Runner's request bodies and FastAPI's body parsing (422)
state        the loaded model, loading a model file, the one-generation-at-a-time lock
generation   token generation (rwkv and llama.cpp models)
completions  the chat / completion routes, their JSON and SSE answers
embeddings   the embeddings routes
catalog      the model list routes and credit grants
admin        /, /status, /switch-model, /update-config, /exit
hooks        the test hooks (/_requests, /_stats, /_release, /_reset)
app          app wiring, argument parsing and main
"""
