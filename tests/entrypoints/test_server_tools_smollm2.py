"""Tool calling on SmolLM2 over HTTP: its template knows no tools, so jaxserve's default tool
prompt describes them. A full round trip (a forced call, the tool's result, a final answer) and a
streamed named call, through the openai SDK.

SmolLM2-135M does not call tools by itself under "auto" (it answers in prose); reading calls in
"auto" is covered by tests/structured/test_tool_parser.py."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.support.live_server import serve

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "description": "The city name",
                                           "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def live_server(smollm2_reference_llm):
    """SmolLM2 on the reference backend, instead of the session's tiny server."""
    with serve(smollm2_reference_llm) as live:
        yield live


def test_round_trip_call_result_answer(openai_client, live_server):
    # one call: with parallel calls allowed, greedy SmolLM2 repeats the same call until max_tokens
    first = openai_client.chat.completions.create(
        model=live_server.model, messages=ASK, tools=[WEATHER], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=40)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    assert call.function.name == "get_weather" and "paris" in arguments["city"].lower()

    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id,
                "content": json.dumps({"city": "Paris", "sky": "sunny", "celsius": 24})}]
    final = openai_client.chat.completions.create(
        model=live_server.model, messages=history, tools=[WEATHER], temperature=0,
        max_tokens=60)
    answer = final.choices[0]
    assert answer.message.tool_calls is None and answer.finish_reason == "stop"
    assert "24" in answer.message.content or "sunny" in answer.message.content.lower(), \
        answer.message.content


@pytest.mark.parametrize("stream", [False, True])
def test_required_with_parallel_calls_ends_by_itself(http, live_server, stream):
    # the grammar used to refuse SmolLM2's "\n\n" before EOS: it repeated the call to the limit
    body = {"model": live_server.model,
            "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER],
            "tool_choice": "required", "temperature": 0, "max_tokens": 64}
    if stream:
        events = http.sse("/v1/chat/completions", body)
        chunks = [e["choices"][0] for e in events if e != "[DONE]" and e["choices"]]
        finish_reason = next(c["finish_reason"] for c in chunks if c["finish_reason"])
        content = "".join(c["delta"].get("content") or "" for c in chunks)
        arguments = "".join(t["function"].get("arguments") or ""
                            for c in chunks for t in c["delta"].get("tool_calls") or [])
        calls = [json.loads(arguments)]  # a lone call: its fragments join
    else:
        (choice,) = http.post("/v1/chat/completions", json=body).json()["choices"]
        finish_reason, content = choice["finish_reason"], choice["message"]["content"]
        calls = [json.loads(c["function"]["arguments"]) for c in choice["message"]["tool_calls"]]
    assert finish_reason == "tool_calls" and not content
    assert calls and all("paris" in c["city"].lower() for c in calls)


def test_streamed_named_call_accumulates_in_the_sdk(openai_client, live_server):
    named = {"type": "function", "function": {"name": "get_weather"}}
    with openai_client.chat.completions.stream(model=live_server.model, messages=ASK,
                                               tools=[WEATHER], tool_choice=named,
                                               temperature=0, max_tokens=40) as stream:
        fragments = [event.arguments_delta for event in stream
                     if event.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert len(fragments) > 1 and "".join(fragments) == call.function.arguments
    assert json.loads(call.function.arguments)["city"].lower().startswith("paris")
