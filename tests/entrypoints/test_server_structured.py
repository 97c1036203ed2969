"""Structured outputs over HTTP on the tiny random model: whatever a random model writes under a
constraint matches it, streamed or not, through every request field that carries one; two
constraints or a bad schema/regex/grammar are a 400 naming the field; a repeated schema compiles
once; the openai SDK parses it all."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion

ASK = [{"role": "user", "content": "Answer in the required format."}]
REGEX = r"(yes|no), [0-9]{1,3} (cats|dogs)"
CHOICES = ["red", "green", "blue", "dark purple"]
# a random model writes free strings until it runs out of tokens: every string here is bounded
SCHEMA = {"type": "object",
          "properties": {"size": {"enum": ["S", "M", "L"]},
                         "count": {"type": "integer", "minimum": 1, "maximum": 50},
                         "ok": {"type": "boolean"},
                         "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                                  "minItems": 1, "maxItems": 3},
                         "code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
          "required": ["size", "count", "ok", "tags", "code"], "additionalProperties": False}


def post(http, **body) -> dict:
    body.setdefault("messages", ASK)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    ChatCompletion.model_validate(response.json())
    return response.json()


def texts(http, stream: bool, n: int = 4, **body) -> list[tuple[str, str]]:
    """(text, finish_reason) of n sampled choices."""
    body = {"messages": ASK, "n": n, "temperature": 1.0, "max_tokens": 60, **body}
    if not stream:
        return [(c["message"]["content"], c["finish_reason"])
                for c in post(http, **body)["choices"]]
    events = http.sse("/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    out = {i: ["", None] for i in range(n)}
    for event in events[:-1]:
        for c in event["choices"]:
            out[c["index"]][0] += c["delta"].get("content", "")
            out[c["index"]][1] = c["finish_reason"] or out[c["index"]][1]
    return [tuple(out[i]) for i in range(n)]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("field", [{"guided_regex": REGEX},
                                   {"structured_outputs": {"regex": REGEX}}])
def test_regex_always_matches(http, stream, field):
    for seed in (1, 2):
        for text, finish in texts(http, stream, seed=seed, **field):
            assert re.fullmatch(REGEX, text) and finish == "stop", text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("field", [{"guided_choice": CHOICES},
                                   {"structured_outputs": {"choice": CHOICES}}])
def test_choice_always_matches(http, stream, field):
    for seed in (1, 2):
        for text, finish in texts(http, stream, seed=seed, **field):
            assert text in CHOICES and finish == "stop", text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("field", [
    {"response_format": {"type": "json_schema",
                         "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}},
    {"structured_outputs": {"json": SCHEMA}},
    {"guided_json": json.dumps(SCHEMA)},
])
def test_json_schema_always_validates(http, stream, field):
    for text, finish in texts(http, stream, seed=3, max_tokens=120, **field):
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), SCHEMA)


def test_lark_grammar(http):
    grammar = 'start: "(" N ("+" N)* ")" \nN: /[1-9][0-9]?/'
    for text, finish in texts(http, False, seed=5, guided_grammar=grammar, max_tokens=100):
        assert finish == "stop" and re.fullmatch(r"\(\d+(\+\d+)*\)", text), text


def test_text_format_is_no_constraint(http):
    greedy = {"max_tokens": 5, "ignore_eos": True, "temperature": 0}
    body = post(http, response_format={"type": "text"}, **greedy)
    assert body["choices"][0]["finish_reason"] == "length"
    # the reply of the same request without response_format, token for token
    assert body["choices"] == post(http, **greedy)["choices"]


def test_a_repeated_schema_compiles_once(http, live_server):
    backend = live_server.engine.admission.constraint_factory
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 7,
                                                     "maximum": 7}},
              "required": ["n"], "additionalProperties": False}
    post(http, guided_json=schema, max_tokens=20)
    before = backend.compilations
    for _ in range(3):
        body = post(http, guided_json=schema, max_tokens=20, stream=False)
        assert json.loads(body["choices"][0]["message"]["content"]) == {"n": 7}
    assert backend.compilations == before


@pytest.mark.parametrize("body, param, words", [
    ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex",
     "response_format and guided_regex"),
    ({"structured_outputs": {"regex": "a+", "choice": ["a"]}}, "structured_outputs",
     "exactly one"),
    ({"structured_outputs": {}}, "structured_outputs", "exactly one"),
    ({"guided_regex": "a(b"}, "guided_regex", "unclosed group"),
    ({"structured_outputs": {"regex": "[z-a]"}}, "structured_outputs.regex", "regex"),
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format.json_schema.schema", "nonsense"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 7}}},
     "response_format.json_schema.schema", "JSON object"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"guided_json": {"type": "array", "minItems": 4, "maxItems": 2}}, "guided_json",
     "minItems"),
    ({"guided_grammar": "start: undefined_rule"}, "guided_grammar", "undefined_rule"),
    # a keyword llguidance cannot enforce is refused, never silently ignored
    ({"guided_json": {"type": "array", "uniqueItems": True}}, "guided_json", "uniqueItems"),
    ({"response_format": {"type": "yaml"}}, "response_format.type", "yaml"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "schema"),
    ({"guided_choice": []}, "guided_choice", "empty"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice", "empty"),
])
def test_bad_constraints_are_400s_naming_the_field(http, body, param, words):
    response = http.post("/v1/chat/completions", json={"messages": ASK, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert words in error["message"], error


def test_openai_sdk_response_format(live_server):
    client = openai.OpenAI(base_url=live_server.base_url, api_key=live_server.api_key,
                           max_retries=0)
    reply = client.chat.completions.create(
        model=live_server.model, messages=ASK, temperature=1.0, seed=9, max_tokens=120,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
    choice = client.chat.completions.create(
        model=live_server.model, messages=ASK, max_tokens=20,  # "dark purple" is 11 byte tokens
        extra_body={"structured_outputs": {"choice": CHOICES}})
    assert choice.choices[0].message.content in CHOICES
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=live_server.model, messages=ASK,
                                       extra_body={"guided_regex": "(("})
    assert info.value.body["param"] == "guided_regex"


@pytest.mark.parametrize("stream", [False, True])
def test_completions_take_constraints_too(http, stream):
    body = {"prompt": "Pick one:", "n": 3, "temperature": 1.0, "seed": 4, "max_tokens": 40,
            "guided_regex": REGEX}
    if stream:
        events = http.sse("/v1/completions", body)
        got = ["", "", ""]
        for event in events[:-1]:
            for c in event["choices"]:
                got[c["index"]] += c["text"]
    else:
        response = http.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        got = [c["text"] for c in response.json()["choices"]]
    assert all(re.fullmatch(REGEX, text) for text in got), got
    response = http.post("/v1/completions", json={"prompt": "x", "guided_regex": "(("})
    assert response.status_code == 400 and response.json()["error"]["param"] == "guided_regex"
