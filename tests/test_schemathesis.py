"""The public API fuzzed: schemathesis holds a running gateway to its own /openapi.json.

The gateway (a real process, in front of the OpenAI double) publishes its inference endpoints
(gateway/api/openapi_doc.py); schemathesis generates requests from that document, valid ones and
ones that break it (wrong types, missing fields, other media types, other methods), sends them,
and checks every answer: no 5xx, the status and content type are documented, the body matches
its documented schema (every error is the OpenAI envelope, every SSE event an event), and a
request that breaks the schema is refused with a 4xx. The FastAPI endpoints in the same document
are fuzzed too. Bounded: a fixed, derandomized number of examples per operation (~100 requests
per inference endpoint: examples, fuzzing and coverage phases, valid and invalid), ~10 s in all.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, negative_data_rejection, not_a_server_error,
                                 response_headers_conformance, response_schema_conformance,
                                 status_code_conformance)

from tests.procs import Gateway, Spawner

MODEL = "test-model"
EXAMPLES = 50  # per operation and generation mode (fuzzing phase); CI budget: the whole module < 60 s
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]

log = logging.getLogger(__name__)
_turn = itertools.count()
SEEN: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def fuzzed_gateway(module_spawn: Spawner) -> Iterator[Gateway]:
    up = module_spawn.double("fuzz-up", MODEL)
    gw = module_spawn.gateway({"backends": [{"name": "fuzz-up", "kind": "vllm", "url": up.url}]})
    t0 = time.monotonic()
    yield gw
    elapsed = time.monotonic() - t0
    # Whatever schemathesis sent, the gateway logged no unhandled error, and the backend got only
    # requests for the served model on the paths the gateway chose (no field steers either).
    assert "Traceback" not in gw.proc.output()
    got = up.requests()
    assert got, "no fuzzed request reached the backend: the answers' schemas went unchecked"
    for r in got:
        assert r["path"] in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses") and \
            r["body"]["model"] == MODEL, r
    counts = "; ".join(f"{op} {dict(sorted(c.items()))}" for op, c in sorted(SEEN.items()))
    log.info("schemathesis: %.1f s; statuses per operation: %s", elapsed, counts)


@pytest.fixture(scope="module")
def gateway_schema(fuzzed_gateway: Gateway) -> Any:
    config = schemathesis.Config.from_dict({
        "seed": 20261203,
        "generation": {"mode": "all", "max-examples": EXAMPLES, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
    })
    return schemathesis.openapi.from_url(fuzzed_gateway.url + "/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("gateway_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_against_its_schema(case: schemathesis.Case) -> None:
    meta = case.meta
    if (meta is not None and meta.generation.mode is GenerationMode.POSITIVE and isinstance(case.body, dict)
            and case.body.get("model") != MODEL and next(_turn) % 2):
        # Random names are all 404s: every other valid body names the served model instead, so
        # answers (JSON and streams) get checked against their schema too.
        case.body = {**case.body, "model": MODEL}
    response = case.call_and_validate(checks=CHECKS, timeout=30)
    SEEN[f"{case.method} {case.path}"][response.status_code] += 1


def test_inference_endpoints_are_published(fuzzed_gateway: Gateway) -> None:
    doc = httpx.get(fuzzed_gateway.url + "/openapi.json").json()
    for path, required in (("/v1/chat/completions", ["model", "messages"]), ("/v1/completions", ["model", "prompt"]),
                           ("/v1/embeddings", ["model", "input"]), ("/v1/responses", ["model", "input"])):
        op = doc["paths"][path]["post"]
        body = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        shape = doc["components"]["schemas"][body]
        assert shape["required"] == required and shape["additionalProperties"] is True
        assert shape["properties"]["model"]["examples"] == [MODEL]  # the served names: one that answers
        assert {"200", "400", "401", "404", "413", "415", "502", "503", "504"} <= set(op["responses"])
    assert "text/event-stream" in doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
