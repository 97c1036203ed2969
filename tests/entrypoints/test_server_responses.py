"""``/v1/responses`` on SmolLM2 through the openai SDK: plain, streamed (raw events and the SDK's
``responses.stream``), a tool call and its result, ``text.format``, ``previous_response_id``, the
store's GET and DELETE, and the refusals."""

from __future__ import annotations

import json
import logging
import time

import httpx
import jsonschema
import openai
import pytest

from tests.support.live_server import serve

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "name": "get_weather",
           "description": "Get the current weather in a city",
           "parameters": {"type": "object",
                          "properties": {"city": {"type": "string", "maxLength": 30}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}
ASK = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def live_server(smollm2_reference_llm):
    """SmolLM2 on the reference backend, instead of the session's tiny server."""
    with serve(smollm2_reference_llm) as live:
        yield live


def create(client, live_server, **fields):
    return client.responses.create(model=live_server.model, temperature=0, **fields)


def test_plain(openai_client, live_server):
    response = create(openai_client, live_server, input=ASK, max_output_tokens=24,
                      metadata={"run": "plain"}, instructions="You are a geography teacher.")
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status in ("completed", "incomplete") and response.model == live_server.model
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    assert "paris" in response.output_text.lower(), response.output_text
    usage = response.usage
    assert usage.input_tokens > 10 and 0 < usage.output_tokens <= 24
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert response.metadata == {"run": "plain"} and response.temperature == 0
    assert response.instructions == "You are a geography teacher."


def test_a_cut_reply_is_incomplete(openai_client, live_server):
    response = create(openai_client, live_server, input=ASK, max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3


def test_streamed_events(openai_client, live_server):
    whole = create(openai_client, live_server, input=ASK, max_output_tokens=24)
    events = list(create(openai_client, live_server, input=ASK, max_output_tokens=24,
                         stream=True))
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text == final.output_text == events[-4].text == whole.output_text  # greedy
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.id == events[0].response.id and events[0].response.status == "in_progress"


def test_events_are_framed_as_vllm_frames_them(http):
    # an event line naming the type, then its data line; no [DONE]
    with http.stream("POST", "/v1/responses",
                     json={"input": ASK, "max_output_tokens": 4, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in response.read().decode().split("\n\n") if b]
    assert len(blocks) > 6
    for block in blocks:
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: "), block
        assert json.loads(data[len("data: "):])["type"] == event[len("event: "):]


def test_sdk_stream_assembles_the_final_response(openai_client, live_server):
    deltas = []
    with openai_client.responses.stream(model=live_server.model, input=ASK, temperature=0,
                                        max_output_tokens=24) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and "paris" in final.output_text.lower()
    assert openai_client.responses.retrieve(final.id).output_text == final.output_text


def test_tool_call_and_result_round_trip(openai_client, live_server):
    ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    first = create(openai_client, live_server, input=ask, tools=[WEATHER],
                   tool_choice="required", parallel_tool_calls=False, max_output_tokens=40)
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.status == "completed" and call.id.startswith("fc_")
    assert call.call_id.startswith("call_")
    arguments = json.loads(call.arguments)
    jsonschema.validate(arguments, WEATHER["parameters"])
    assert "paris" in arguments["city"].lower()

    result = {"type": "function_call_output", "call_id": call.call_id,
              "output": json.dumps({"city": "Paris", "sky": "sunny", "celsius": 24})}
    final = create(openai_client, live_server, input=[*ask, call.model_dump(), result],
                   tools=[WEATHER], max_output_tokens=60)
    assert [item.type for item in final.output] == ["message"]
    assert "24" in final.output_text or "sunny" in final.output_text.lower(), final.output_text
    # the same turn with the call taken from the stored response: the same prompt
    chained = create(openai_client, live_server, input=[result], previous_response_id=first.id,
                     tools=[WEATHER], max_output_tokens=60)
    assert chained.usage.input_tokens == final.usage.input_tokens
    assert chained.output_text == final.output_text


def test_streamed_function_call(openai_client, live_server):
    with openai_client.responses.stream(
            model=live_server.model, input="Weather in Rome?", tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
            max_output_tokens=40) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    (call,) = final.output
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert call.type == "function_call" and done.arguments == call.arguments
    assert call.parsed_arguments == json.loads(call.arguments)  # strict: the SDK parses them
    assert "rome" in call.parsed_arguments["city"].lower()


def test_text_format_json_schema(openai_client, live_server):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "country": {"type": "string", "maxLength": 20}},
              "required": ["city", "country"], "additionalProperties": False}
    response = create(openai_client, live_server, input="Name a city and its country as JSON.",
                      max_output_tokens=60,
                      text={"format": {"type": "json_schema", "name": "place", "schema": schema,
                                       "strict": True}})
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.type == "json_schema"


def test_previous_response_id_continues_the_conversation(openai_client, live_server):
    first = create(openai_client, live_server, input="My name is Ada. Say hello to me.",
                   instructions="Answer briefly.", max_output_tokens=16)
    second = create(openai_client, live_server, input="What is my name?",
                    previous_response_id=first.id, max_output_tokens=16)
    assert second.previous_response_id == first.id
    # the prompt is the first turn, its answer, then the new input; the instructions are not
    # carried over (OpenAI's rule)
    tokenizer = live_server.tokenizer
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "My name is Ada. Say hello to me."},
         {"role": "assistant", "content": first.output_text},
         {"role": "user", "content": "What is my name?"}], add_generation_prompt=True,
        tokenize=False)
    expected_ids = tokenizer(expected, add_special_tokens=False).input_ids
    assert second.usage.input_tokens == len(expected_ids)
    assert second.usage.input_tokens > first.usage.input_tokens
    with pytest.raises(openai.NotFoundError) as caught:
        create(openai_client, live_server, input="x", previous_response_id="resp_nope")
    assert caught.value.body["param"] == "previous_response_id"


def test_get_and_delete_by_id(openai_client, live_server, http):
    response = create(openai_client, live_server, input=ASK, max_output_tokens=8)
    got = openai_client.responses.retrieve(response.id)
    assert got.id == response.id and got.output_text == response.output_text
    assert got.usage == response.usage
    cancel = http.post(f"/v1/responses/{response.id}/cancel")  # vLLM: only background ones
    assert cancel.status_code == 400 and "synchronous" in cancel.json()["error"]["message"]
    deleted = http.delete(f"/v1/responses/{response.id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": response.id, "object": "response", "deleted": True}
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/cancel")):
        missing = http.request(method, f"/v1/responses/{response.id}{path}")
        assert missing.status_code == 404
        assert missing.json() == {"error": {
            "message": f"Response with id '{response.id}' not found.",
            "type": "invalid_request_error", "param": None, "code": None}}
    unstored = create(openai_client, live_server, input=ASK, max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(unstored.id)


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
    ({"include": ["file_search_call.results"]}, "include[0]"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
])
def test_unsupported_fields_are_a_400_naming_them(openai_client, live_server, fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        create(openai_client, live_server, input=ASK, **fields)
    assert caught.value.body["param"] == param and caught.value.body["type"] == \
        "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    ({"input": 3}, "input"),
    ({"input": []}, "input"),
    ({"input": [1]}, "input[0]"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
     "input[0].content[0]"),
    ({"input": "x", "tools": "none"}, "tools"),
    ({"input": "x", "text": {"format": "json"}}, "text.format"),
    ({}, "input"),
])
def test_bad_input_shapes_are_a_400(http, body, param):
    response = http.post("/v1/responses", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_the_api_key_request_id_and_access_log_cover_responses(live_server, http, caplog):
    with httpx.Client(base_url=live_server.url) as anonymous:
        assert anonymous.post("/v1/responses", json={"input": "x"}).status_code == 401
        assert anonymous.get("/v1/responses/resp_x").status_code == 401
        assert anonymous.delete("/v1/responses/resp_x").status_code == 401
    caplog.set_level(logging.INFO, logger="jaxserve.access")
    response = http.post("/v1/responses", headers={"X-Request-Id": "abc-123"},
                         json={"input": "Hi", "max_output_tokens": 2, "ignore_eos": True})
    assert response.headers["x-request-id"] == "abc-123"
    assert response.json()["id"] == "resp_abc-123"
    deadline = time.monotonic() + 5  # the line is written just after the last byte goes
    while not (lines := [r.getMessage() for r in caplog.records
                         if "request_id=abc-123" in r.getMessage()]):
        assert time.monotonic() < deadline, "no access line"
        time.sleep(0.02)
    (line,) = lines
    assert line.startswith("POST /v1/responses 200 request_id=abc-123 prompt_tokens=")
    assert "output_tokens=2" in line


def test_output_logprobs(openai_client, live_server):
    response = create(openai_client, live_server, input=ASK, max_output_tokens=6,
                      include=["message.output_text.logprobs"], top_logprobs=2)
    (part,) = response.output[0].content
    assert len(part.logprobs) == response.usage.output_tokens == 6
    assert "".join(entry.token for entry in part.logprobs) == part.text
    for entry in part.logprobs:
        assert len(entry.top_logprobs) == 2 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy
    events = list(create(openai_client, live_server, input=ASK, max_output_tokens=6,
                         include=["message.output_text.logprobs"], top_logprobs=2,
                         stream=True))
    streamed = [entry for e in events if e.type == "response.output_text.delta"
                for entry in e.logprobs]
    assert [e.token for e in streamed] == [e.token for e in part.logprobs]
    assert create(openai_client, live_server, input=ASK, max_output_tokens=2,
                  top_logprobs=2).output[0].content[0].logprobs is None  # not included
