"""RWKV-Runner tool calls (issue 12): the double against recordings of the real backend-python's tool-call
answers, then an agent's round trip through the gateway's rwkv-runner adapter with the official client.

tests/fixtures/rwkv_tool_recordings/ was recorded by tests/backends/rwkv_record_tools.py from the real app
(revision and packages in _meta.json) with a model built to write one tool call (a bigram chain spelling
`call_text`): the real parser then answers a call, whole (postprocess_response) and streamed (the
function-call side of async_generator_stream_response_tool_call). The double gets the same requests, told
to write the same text in the same World tokens (each recording's "double" field), and must answer the
same, event for event; only the random call id may differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.agent_turns import assistant_turn
from tests.procs import Spawner, free_port
from tests.test_rwkv_recordings import HEADERS, check_json, events, layout, send, skeleton

DIR = Path(__file__).resolve().parent / "fixtures" / "rwkv_tool_recordings"
RECORDINGS = [json.loads(p.read_text()) for p in sorted(DIR.glob("[0-9]*.json"))]
CALL = RECORDINGS[1]["double"]  # the text (and its tokens) the recorded model wrote
ID_VARY = {"choices.*.message.tool_calls.*.id", "choices.*.delta.tool_calls.*.id"}


def by_name(name: str) -> dict[str, Any]:
    return next(r for r in RECORDINGS if r["name"] == name)


@pytest.fixture(scope="module")
def replies(module_spawn: Spawner, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    model_dir = tmp_path_factory.mktemp("rwkv-model")
    (model_dir / "tiny-rwkv-world.pth").write_bytes(b"")
    port = free_port()
    p = module_spawn.proc([sys.executable, "-m", "tests.doubles.rwkv_server", "--port", str(port)],
                          f"rwkv-tools-{port}")
    url = f"http://127.0.0.1:{port}"
    p.wait_http(url + "/")
    return {rec["name"]: send(url, rec, model_dir) for rec in RECORDINGS}


def check_stream_exactly(real: str, double: str, vary: list[str]) -> None:
    """Event by event: the same JSON, in json.dumps' layout, but for the varying fields."""
    r_ev, d_ev = events(real), events(double)
    assert len(d_ev) == len(r_ev), (d_ev, r_ev)
    for r, d in zip(r_ev, d_ev):
        assert r.startswith("data: ") and d.startswith("data: "), (r, d)
        r, d = r[len("data: "):], d[len("data: "):]
        if r == "[DONE]":
            assert d == r
            continue
        rdoc, ddoc = json.loads(r), json.loads(d)
        assert layout(ddoc, "json.dumps") == d
        assert json.dumps(skeleton(ddoc, vary)) == json.dumps(skeleton(rdoc, vary)), (d, r)


@pytest.mark.parametrize("rec", RECORDINGS, ids=[r["name"] for r in RECORDINGS])
def test_double_answers_tool_calls_like_the_real_app(rec: dict[str, Any], replies: dict[str, dict[str, Any]]) -> None:
    real, got = rec["response"], replies[rec["name"]]
    assert got["status"] == real["status"], got["body"][:300]
    rh, dh = dict(real["headers"]), dict(got["headers"])
    for name in HEADERS:
        assert dh.get(name) == rh.get(name), name
    if rh.get("content-type", "").startswith("text/event-stream"):
        check_stream_exactly(real["body"], got["body"], rec["vary"])
    elif not rec["vary"]:
        assert got["body"] == real["body"]
    else:
        check_json(real["body"], got["body"], rec["vary"])


def test_recordings_are_real_tool_calls() -> None:
    """What the recordings claim: the real app made a call, whole and streamed, with JSON arguments."""
    meta = json.loads((DIR / "_meta.json").read_text())
    assert meta["order"] == [r["name"] for r in RECORDINGS] and meta["packages"]["sse-starlette"] == "1.6.5"
    whole = json.loads(by_name("chat_tool_call")["response"]["body"])["choices"][0]
    assert whole["finish_reason"] == "tool_calls" and whole["message"]["content"] is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole["message"]["tool_calls"]] \
        == [("weather", {"city": "Paris"})]
    args, finish = "", None
    for ev in events(by_name("chat_tool_call_stream")["response"]["body"]):
        data = ev[len("data: "):]
        if data != "[DONE]":
            choice = json.loads(data)["choices"][0]
            args += "".join(t["function"].get("arguments", "") for t in choice["delta"].get("tool_calls", []))
            finish = choice["finish_reason"] or finish
    assert json.loads(args) == {"city": "Paris"} and finish == "tool_calls"
    assert set(by_name("chat_tool_call")["vary"]) & ID_VARY  # the id is random: the only call field not compared


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_agent_round_trip_through_the_gateway(spawn: Spawner, stream: bool) -> None:
    d = spawn.start_double("rwkv_server", "/status", "--preload", "models/tiny-rwkv-world.pth")
    gw = spawn.gateway({"backends": [{"name": "rwkv", "kind": "rwkv-runner", "url": d.url}]})
    tools: Any = by_name("chat_tool_call")["request"]["json"]["tools"]
    ask: Any = by_name("chat_tool_call")["request"]["json"]["messages"]
    with openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=60) as client:
        content, calls, finish = assistant_turn(client, "tiny-rwkv-world", tools, ask, stream, max_tokens=40,
                                                extra_body=CALL)
        assert (content, finish) == (None, "tool_calls"), (content, calls, finish)
        assert len(calls) == 1 and calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
        assert (calls[0]["function"]["name"], json.loads(calls[0]["function"]["arguments"])) == \
            ("weather", {"city": "Paris"})
        history = [*ask, {"role": "assistant", "content": None, "tool_calls": calls},
                   {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny, 21 C"}]
        answer = {"x_double": {"text": "Sunny, 21 C in Paris.\n\nUser"}}
        content, more, finish = assistant_turn(client, "tiny-rwkv-world", tools, history, stream, max_tokens=40,
                                               extra_body=answer)
        # streamed, the "\n\n" of the stop "\n\nUser" goes out before "User" is seen (as recording 04 shows)
        assert (content, more, finish) == ("Sunny, 21 C in Paris." + "\n\n" * stream, [], "stop")
        if stream:  # the SDK's own accumulator: one call, its arguments parsed
            with client.chat.completions.stream(model="tiny-rwkv-world", messages=ask, max_tokens=40,
                                                tools=[{**t, "function": {**t["function"], "strict": True}}
                                                       for t in tools], extra_body=CALL) as s:
                final = s.get_final_completion()
            tc = final.choices[0].message.tool_calls
            assert tc and len(tc) == 1 and tc[0].function.parsed_arguments == {"city": "Paris"}
