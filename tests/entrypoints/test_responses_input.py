"""The Responses API without a model: input items to chat messages, the conversation of a
previous response, the request's options, output items, the store's bounds, and the routes in
the OpenAPI document."""

from __future__ import annotations

import msgspec
import pytest

from jaxserve.entrypoints.errors import APIError
from jaxserve.entrypoints.response_store import ResponseStore
from jaxserve.entrypoints.responses_input import (
    continues_final_message,
    conversation,
    input_messages,
    output_messages,
)
from jaxserve.entrypoints.responses_options import (
    refuse_unsupported,
    responses_params,
    responses_structure,
)
from jaxserve.entrypoints.responses_protocol import (
    FunctionCallItem,
    OutputMessage,
    OutputText,
    ResponsesRequest,
)
from jaxserve.entrypoints.responses_stream import ResponseOutput
from jaxserve.structured.tool_parser import ToolCallParser

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


def request(**fields) -> ResponsesRequest:
    return msgspec.convert({"input": "hi", **fields}, ResponsesRequest)


def refused(fn, *args) -> APIError:
    with pytest.raises(APIError) as caught:
        fn(*args)
    assert caught.value.status == 400
    return caught.value


# ---- input --------------------------------------------------------------------------------------
def test_a_string_is_one_user_message():
    assert input_messages("Hello") == [{"role": "user", "content": "Hello"}]


def test_message_items_keep_their_roles_and_join_text_parts():
    items = [{"role": "developer", "content": "Be brief."},
             {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "one"},
                          {"type": "input_text", "text": "two"}]},
             {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
              "content": [{"type": "output_text", "text": "ok", "annotations": []}]}]
    assert input_messages(items) == [{"role": "developer", "content": "Be brief."},
                                     {"role": "user", "content": "one\ntwo"},
                                     {"role": "assistant", "content": "ok"}]


def test_function_calls_join_the_assistant_message_and_outputs_become_tool_messages():
    items = [{"role": "user", "content": "Weather in Paris and Rome?"},
             {"type": "function_call", "call_id": "call_a", "name": "get_weather",
              "arguments": '{"city": "Paris"}'},
             {"type": "function_call", "call_id": "call_b", "name": "get_weather",
              "arguments": '{"city": "Rome"}', "id": "fc_2", "status": "completed"},
             {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
             {"type": "function_call_output", "call_id": "call_b",
              "output": [{"type": "input_text", "text": "rain"}]}]
    user, assistant, paris, rome = input_messages(items)
    assert user == {"role": "user", "content": "Weather in Paris and Rome?"}
    assert assistant == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}
    assert paris == {"role": "tool", "tool_call_id": "call_a", "content": "sunny"}
    assert rome == {"role": "tool", "tool_call_id": "call_b", "content": "rain"}


@pytest.mark.parametrize("items, param", [
    ([], "input"),
    ([{"role": "tool", "content": "x"}], "input[0].role"),
    ([{"role": "user"}], "input[0].content"),
    ([{"role": "user", "content": 3}], "input[0].content"),
    ([{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}],
     "input[0].content[0]"),
    ([{"role": "user", "content": "a"}, {"type": "item_reference", "id": "msg_1"}],
     "input[1].type"),
    ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id"),
    ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}],
     "input[0].arguments"),
    ([{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
])
def test_bad_items_are_a_400_naming_them(items, param):
    assert refused(input_messages, items).param == param


def test_an_unfinished_assistant_message_is_continued():
    partial = [{"role": "user", "content": "Count"},
               {"role": "assistant", "content": "1, 2,", "status": "incomplete"}]
    assert continues_final_message(partial)
    assert not continues_final_message(partial[:1]) and not continues_final_message("x")


def test_the_previous_output_comes_before_the_new_input_and_instructions_first():
    previous_input = [{"role": "user", "content": "My name is Ada."}]
    output = [OutputMessage(id="msg_1", status="completed",
                            content=[OutputText(text="Hello Ada.")]),
              FunctionCallItem(id="fc_1", call_id="call_1", name="f", arguments="{}",
                               status="completed")]
    previous = [*previous_input, *output_messages(output)]
    kept, prompt = conversation(previous, input_messages("What is my name?"), "Be brief.")
    assert kept == [{"role": "user", "content": "My name is Ada."},
                    {"role": "assistant", "content": "Hello Ada.", "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "user", "content": "What is my name?"}]
    assert prompt == [{"role": "system", "content": "Be brief."}, *kept]


# ---- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, param", [
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
    ({"include": ["message.output_text.logprobs", "file_search_call.results"]}, "include[1]"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"max_tool_calls": 2}, "max_tool_calls"),
])
def test_unsupported_fields_are_refused_by_name(fields, param):
    assert refused(refuse_unsupported, request(**fields)).param == param


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [WEATHER, {"type": "code_interpreter", "container": {"type": "auto"}}]},
     "tools[1].type"),
    ({"tools": [{**WEATHER, "name": "bad name"}]}, "tools[0].name"),
    ({"tools": [{**WEATHER, "parameters": "none"}]}, "tools[0].parameters"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"tools": [WEATHER], "tool_choice": "required",
      "text": {"format": {"type": "json_object"}}}, "tool_choice"),
])
def test_bad_tools_and_formats_are_refused_by_name(fields, param):
    assert refused(responses_structure, request(**fields)).param == param


def test_flat_tools_and_a_named_choice_become_a_forced_call():
    structure = responses_structure(request(
        tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}))
    assert structure.tools.names == {"get_weather"} and structure.tools.choice == "named"
    assert structure.param == "tool_choice" and structure.constraint.grammar
    auto = responses_structure(request(tools=[WEATHER]))
    assert auto.constraint is None and auto.reads_tool_calls


def test_text_format_json_schema_is_the_constraint():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    structure = responses_structure(request(
        text={"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}}))
    assert structure.param == "text.format.schema" and structure.constraint.json is not None
    assert responses_structure(request(text={"format": {"type": "text"}})).constraint is None


def test_sampling_params_take_the_request_then_the_model_defaults():
    params = responses_params(request(temperature=0.5, max_output_tokens=7,
                                      include=["message.output_text.logprobs"], top_logprobs=3),
                              {"top_p": 0.9}, vocab_size=100)
    assert (params.temperature, params.top_p, params.max_tokens, params.logprobs) == \
        (0.5, 0.9, 7, 3)
    assert responses_params(request(top_logprobs=2), {}, 100).logprobs is None  # not included
    assert refused(responses_params, request(top_logprobs=99), {}, 100).param == "top_logprobs"


# ---- output items -------------------------------------------------------------------------------
def test_streamed_and_whole_output_agree():
    text = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n' \
           '</tool_call>'
    whole = ResponseOutput(ToolCallParser({"get_weather"}), want_logprobs=False)
    whole.feed(text, None, final=True, cut=False)
    whole.finish(incomplete=False)
    streamed = ResponseOutput(ToolCallParser({"get_weather"}), want_logprobs=False)
    events = []
    for i in range(0, len(text), 5):
        events += streamed.feed(text[i:i + 5], None, final=i + 5 >= len(text), cut=False)
    events += streamed.finish(incomplete=False)
    kinds = [type(e).__struct_config__.tag for e in events]
    assert kinds[:2] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-5:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.function_call_arguments.done",
                          "response.output_item.done"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for out in (whole, streamed):
        message, call = out.items
        assert message.content[0].text == "Sure." and message.status == "completed"
        assert (call.name, call.arguments, call.status) == \
            ("get_weather", '{"city": "Paris"}', "completed")
    arguments = "".join(e.delta for e in events
                        if type(e).__struct_config__.tag.endswith("arguments.delta"))
    assert arguments == '{"city": "Paris"}'


# ---- the store ----------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_store_evicts_the_oldest_past_its_size():
    store = ResponseStore(max_size=2, ttl=100, clock=Clock())
    for name in ("a", "b", "c"):
        store.put(name, name.upper(), [{"role": "user", "content": name}])
    assert store.get("a") is None and store.get("b").response == "B" and len(store) == 2
    assert store.get("c").messages == [{"role": "user", "content": "c"}]


def test_the_store_forgets_a_response_after_its_lifetime():
    clock = Clock()
    store = ResponseStore(max_size=10, ttl=60, clock=clock)
    store.put("a", "A", [])
    clock.now = 30
    store.put("b", "B", [])
    clock.now = 61
    assert store.get("a") is None and store.get("b").response == "B"
    clock.now = 91
    assert store.get("b") is None and len(store) == 0


def test_delete_says_whether_it_held_the_response():
    store = ResponseStore(max_size=10, ttl=60, clock=Clock())
    store.put("a", "A", [])
    assert store.delete("a") and not store.delete("a") and store.get("a") is None


@pytest.mark.parametrize("field, value", [("responses_store_size", -1),
                                          ("responses_store_ttl", 0)])
def test_the_store_bounds_are_checked_in_the_config(field, value):
    from jaxserve.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"server.{field}"):
        load_config(overrides={f"server.{field}": value})


def test_the_routes_are_in_the_openapi_document():
    from jaxserve.config import Config
    from jaxserve.entrypoints.app import create_app

    document = create_app(None, None, Config()).openapi_schema.to_schema()
    paths = document["paths"]
    assert set(paths["/v1/responses/{response_id}"]) >= {"get", "delete"}
    ref = paths["/v1/responses"]["post"]["requestBody"]["content"]["application/json"]
    name = ref["schema"]["$ref"].rsplit("/", 1)[1]
    properties = document["components"]["schemas"][name]["properties"]
    assert {"input", "instructions", "previous_response_id", "tools", "text"} <= set(properties)


def test_reasoning_options_are_typed_so_only_openai_values_are_echoed():
    from jaxserve.entrypoints.responses_protocol import ResponsesRequest

    req = msgspec.json.decode(b'{"input": "hi", "reasoning": {"effort": "high", "summary": null}}',
                              type=ResponsesRequest)
    assert req.reasoning.effort == "high"
    echoed = msgspec.json.decode(msgspec.json.encode(req.reasoning))
    assert "mode" not in echoed  # OpenAI's schema has a string there, never null
    for bad in (b'{"generate_summary": "AAA"}', b'{"effort": "huge"}', b'{"colour": "red"}'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(b'{"input": "hi", "reasoning": ' + bad + b"}",
                                type=ResponsesRequest)


def test_service_tier_outside_openai_tiers_is_refused():
    from jaxserve.entrypoints.responses_protocol import ResponsesRequest

    tier = msgspec.json.decode(b'{"input": "hi", "service_tier": "flex"}', type=ResponsesRequest)
    assert tier.service_tier == "flex"
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"input": "hi", "service_tier": "AAA"}', type=ResponsesRequest)
