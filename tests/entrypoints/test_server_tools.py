"""Tool calling over HTTP on the tiny random model.

The session's tiny server has a template that knows no tools, and the byte-level tiny tokenizer
makes the default tool prompt longer than its 512-token context; so this module serves the tiny
model with a compact template that does read ``tools`` (the path of Qwen/Hermes/Llama templates).
The default prompt is exercised on SmolLM2 in test_server_tools_smollm2.py.

A random model under a forced-call grammar is the worst case: every call must still parse and
its arguments validate against the tool's schema.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.support.configs import TINY_CONFIG
from tests.support.live_server import serve

# renders tools by name and earlier calls with their arguments as objects (tojson), as HF
# templates that support tools do
TOOLS_TEMPLATE = """\
{%- if tools %}<|im_start|>system
tools:{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>
{% endif %}
{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}call {{ c.function.name }} \
{{ c.function.arguments | tojson }}
{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object",
                                  "properties": {"x": {"type": "integer", "minimum": -9,
                                                       "maximum": 99},
                                                 "y": {"type": "integer", "minimum": -9,
                                                       "maximum": 99}},
                                  "required": ["x", "y"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """The tiny model with the tools template, instead of the session's server."""
    from jaxserve.llm import LLM

    template = tmp_path_factory.mktemp("template") / "tools.jinja"
    template.write_text(TOOLS_TEMPLATE)
    with serve(LLM(TINY_CONFIG, progress=False, **{"model.chat_template": str(template)})) as live:
        yield live


def post(http, **body) -> dict:
    body = {"messages": ASK, "tools": TOOLS, "max_tokens": 120, **body}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    ChatCompletion.model_validate(response.json())
    return response.json()


def streamed_calls(http, **body) -> tuple[list[dict], list[str], str]:
    """Tool calls accumulated from the deltas (checking their order), content, finish_reason."""
    body = {"messages": ASK, "tools": TOOLS, "max_tokens": 120, **body}
    events = http.sse("/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    calls: dict[int, dict] = {}
    content, finish = [], None
    for event in events[:-1]:
        ChatCompletionChunk.model_validate(event)
        (choice,) = event["choices"]
        for delta in choice["delta"].get("tool_calls", []):
            if delta["index"] not in calls:  # the first chunk of a call: id, type, name
                assert delta["id"].startswith("call_") and delta["type"] == "function"
                calls[delta["index"]] = {"id": delta["id"], "name": delta["function"]["name"],
                                         "arguments": delta["function"]["arguments"]}
            else:
                assert "id" not in delta and "name" not in delta["function"]
                calls[delta["index"]]["arguments"] += delta["function"]["arguments"]
        content.append(choice["delta"].get("content", ""))
        finish = choice["finish_reason"] or finish
    assert sorted(calls) == list(range(len(calls)))
    return [calls[i] for i in sorted(calls)], content, finish


def check_calls(calls: list[dict], names=("get_weather", "add")) -> None:
    assert calls
    for call in calls:
        assert call["name"] in names
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


@pytest.mark.parametrize("parallel", [True, False])
def test_required_gives_valid_calls(http, parallel):
    finished = 0
    for seed in range(4):
        body = post(http, tool_choice="required", parallel_tool_calls=parallel, seed=seed,
                     temperature=1.0, max_tokens=300)
        (choice,) = body["choices"]
        message = choice["message"]
        assert message["content"] is None
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                 for c in message["tool_calls"]]
        assert all(c["id"].startswith("call_") and c["type"] == "function"
                   for c in message["tool_calls"])
        if choice["finish_reason"] == "length":
            # after each call the random model flips a coin between EOS and one more call
            # (about 80 byte tokens): a run of calls may outlast max_tokens; the cut one is
            # dropped, so every call reported is whole
            assert parallel and calls
        else:
            assert choice["finish_reason"] == "tool_calls"
            finished += 1
        check_calls(calls)
        assert parallel or len(calls) == 1
    assert finished >= 2


def test_named_function_gives_that_function(http):
    for seed in range(3):
        body = post(http, tool_choice={"type": "function", "function": {"name": "add"}},
                     seed=seed, temperature=1.0)
        calls = [c["function"] for c in body["choices"][0]["message"]["tool_calls"]]
        check_calls(calls, names=("add",))


def test_streamed_deltas_add_up_to_the_unstreamed_calls(http):
    for seed in range(3):
        choice = {"type": "function", "function": {"name": "get_weather"}} if seed else "required"
        body = {"tool_choice": choice, "seed": seed, "temperature": 1.0,
                "parallel_tool_calls": False}
        plain = post(http, **body)["choices"][0]
        calls, content, finish = streamed_calls(http, **body)
        assert finish == "tool_calls" and "".join(content) == ""
        check_calls(calls)
        assert [(c["name"], c["arguments"]) for c in calls] == [
            (c["function"]["name"], c["function"]["arguments"])
            for c in plain["message"]["tool_calls"]]


def test_tool_choice_none_reads_no_calls_and_the_template_gets_the_tools(http, live_server):
    body = post(http, tool_choice="none", max_tokens=5, ignore_eos=True)
    message = body["choices"][0]["message"]
    assert "tool_calls" not in message and isinstance(message["content"], str)
    text = live_server.tokenizer.apply_chat_template(ASK, tools=TOOLS, tokenize=False,
                                                    add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\ntools: get_weather add")
    assert body["usage"]["prompt_tokens"] == len(live_server.tokenizer(text).input_ids)


def test_round_trip_call_result_answer(http, live_server):
    first = post(http, tool_choice="required", parallel_tool_calls=False, seed=1)
    (call,) = first["choices"][0]["message"]["tool_calls"]
    check_calls([call["function"]])
    history = [*ASK, first["choices"][0]["message"],
               {"role": "tool", "tool_call_id": call["id"], "content": "18 C"}]
    final = post(http, messages=history, tool_choice="auto", max_tokens=8, ignore_eos=True)
    assert isinstance(final["choices"][0]["message"]["content"], str)
    # the call reached the template with its arguments as an object, the result as a message
    expected = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {**call, "function": {"name": call["function"]["name"],
                              "arguments": json.loads(call["function"]["arguments"])}}]},
        {"role": "tool", "content": "18 C"}]
    text = live_server.tokenizer.apply_chat_template(expected, tools=TOOLS, tokenize=False,
                                                    add_generation_prompt=True)
    assert f"call {call['function']['name']} {{" in text and "<|im_start|>tool\n18 C" in text
    assert final["usage"]["prompt_tokens"] == len(live_server.tokenizer(text).input_ids)


@pytest.mark.parametrize("body, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
    ({"tool_choice": "always"}, "tool_choice"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tool_choice": "required", "guided_regex": "a"}, "tool_choice"),
    ({"tools": [WEATHER, {"type": "function", "function": {
        "name": "broken", "parameters": {"type": "object",
                                         "properties": {"x": {"type": "wrong"}}}}}],
      "tool_choice": "required"}, "tools[1].function.parameters"),
])
def test_bad_tool_requests_are_400s_naming_the_field(http, body, param):
    response = http.post("/v1/chat/completions", json={"messages": ASK, "tools": TOOLS, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()


def test_openai_sdk_parses_calls_and_accumulates_streamed_ones(openai_client, live_server):
    forced = {"model": live_server.model, "messages": ASK, "tools": TOOLS,
              "tool_choice": "required", "seed": 4, "temperature": 1.0, "max_tokens": 120,
              "parallel_tool_calls": False}
    reply = openai_client.chat.completions.create(**forced)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    check_calls([{"name": c.function.name, "arguments": c.function.arguments}
                 for c in message.tool_calls])

    with openai_client.chat.completions.stream(**forced) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in message.tool_calls]
    assert all(c.id.startswith("call_") for c in streamed)

    plain = openai_client.chat.completions.create(
        model=live_server.model, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=4)
    assert plain.choices[0].message.tool_calls is None
