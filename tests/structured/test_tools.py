"""tools and tool_choice: validation, the forced-call grammar (walked by a random model, then
parsed back), and the default tool prompt with tool messages rewritten as text."""

from __future__ import annotations

import json

import jsonschema
import pytest

from jaxserve.sampling_params import StructuredOutputs
from jaxserve.structured import GrammarBackend
from jaxserve.structured.tool_parser import parse_tool_calls
from jaxserve.structured.tool_prompt import (
    DEFAULT_TOOL_PROMPT,
    prompt_messages,
    template_supports_tools,
)
from jaxserve.structured.tools import ToolError, parse_tools

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 12},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object",
                                  "properties": {"x": {"type": "integer", "minimum": 0,
                                                       "maximum": 9},
                                                 "y": {"type": "integer", "minimum": 0,
                                                       "maximum": 9}},
                                  "required": ["x", "y"], "additionalProperties": False}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def test_tool_choice_defaults_and_forms():
    assert parse_tools(None, None).choice == "none"
    assert parse_tools(TOOLS, None).choice == "auto"
    assert parse_tools(TOOLS, "required").forces_call
    named = parse_tools(TOOLS, {"type": "function", "function": {"name": "add"}})
    assert named.choice == "named" and named.named == "add" and named.forces_call
    assert not parse_tools(TOOLS, "none").parses_calls
    assert parse_tools(TOOLS, "auto", parallel_tool_calls=False).parallel is False


@pytest.mark.parametrize("tools, choice, param", [
    (TOOLS, "sometimes", "tool_choice"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    (TOOLS, {"type": "function"}, "tool_choice"),
    (None, "required", "tool_choice"),
    ([{"type": "retrieval"}], None, "tools[0].type"),
    ([{"type": "function", "function": {"name": "has space"}}], None, "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], None,
     "tools[0].function.parameters"),
    ([WEATHER, WEATHER], None, "tools"),
])
def test_bad_tools_name_the_field(tools, choice, param):
    with pytest.raises(ToolError) as info:
        parse_tools(tools, choice)
    assert info.value.param == param


@pytest.mark.parametrize("choice, parallel", [
    ("required", True), ("required", False),
    ({"type": "function", "function": {"name": "add"}}, True),
])
def test_a_forced_call_always_parses_and_validates(tiny_tokenizer, random_walk, choice,
                                                   parallel):
    plan = parse_tools(TOOLS, choice, parallel)
    backend = GrammarBackend(tiny_tokenizer, len(tiny_tokenizer), (2,))
    names_seen = set()
    for seed in range(12):
        text, ended = random_walk(backend, StructuredOutputs(grammar=plan.grammar()),
                                  tiny_tokenizer, seed, max_tokens=600)
        assert ended, text
        content, calls = parse_tool_calls(text, plan.names, plan.parallel)
        assert content is None and calls, text
        assert (parallel and choice == "required") or len(calls) == 1
        for call in calls:
            assert choice == "required" or call.name == "add"
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
            names_seen.add(call.name)
    assert choice != "required" or names_seen == {"get_weather", "add"}


def test_template_support_is_read_from_the_template():
    assert template_supports_tools("{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}")
    assert not template_supports_tools("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert not template_supports_tools(None)


CONVERSATION = [
    {"role": "user", "content": "Weather in Paris, and 2+3?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "add", "arguments": '{"x": 2, "y": 3}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "5"},
]


def test_default_prompt_and_tool_messages_as_text():
    plan = parse_tools(TOOLS, "auto")
    messages, tools = prompt_messages(CONVERSATION, plan, template_has_tools=False)
    assert tools is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith(DEFAULT_TOOL_PROMPT.split("{tools}")[0])
    assert json.dumps(WEATHER["function"]["parameters"]) in system and "<tool_call>" in system
    calls = parse_tool_calls(messages[2]["content"], plan.names)[1]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}), ("add", {"x": 2, "y": 3})]
    assert messages[3]["content"] == ("<tool_response>\n18 C, sunny\n</tool_response>\n"
                                      "<tool_response>\n5\n</tool_response>")
    assert all(set(m) == {"role", "content"} for m in messages)


def test_an_existing_system_message_is_extended_and_none_adds_nothing():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    messages, _ = prompt_messages(chat, parse_tools(TOOLS, "auto", False), False)
    assert messages[0]["content"].startswith("Be brief.\n\nYou can call functions")
    assert "at most one function" in messages[0]["content"]
    assert prompt_messages(chat, parse_tools(TOOLS, "none"), False) == (chat, None)


def test_a_tool_template_gets_the_tools_and_arguments_as_objects():
    messages, tools = prompt_messages(CONVERSATION, parse_tools(TOOLS, "auto"), True)
    assert tools == TOOLS
    assert messages[1]["tool_calls"][1]["function"]["arguments"] == {"x": 2, "y": 3}
    assert messages[2] == CONVERSATION[2]
    assert CONVERSATION[1]["tool_calls"][1]["function"]["arguments"] == '{"x": 2, "y": 3}'
