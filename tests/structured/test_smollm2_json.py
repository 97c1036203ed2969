"""On SmolLM2, each of 10 varied JSON schemas gives output that parses and validates (checked with
``jsonschema``): nested objects, arrays with min/max items, enums, bounded integers, required and
optional fields, strings with a pattern. One batch, greedy, through the offline API."""

from __future__ import annotations

import json

import jsonschema
import pytest

from jaxserve.sampling_params import SamplingParams, StructuredOutputs

pytestmark = pytest.mark.slow

NAME = {"type": "string", "minLength": 1, "maxLength": 24}

SCHEMAS = [
    ("a person with a name and an age",
     {"type": "object", "properties": {"name": NAME,
                                       "age": {"type": "integer", "minimum": 0, "maximum": 120}},
      "required": ["name", "age"], "additionalProperties": False}),
    ("a book with its author as a nested object",
     {"type": "object",
      "properties": {"title": NAME,
                     "author": {"type": "object",
                                "properties": {"first": NAME, "last": NAME},
                                "required": ["first", "last"], "additionalProperties": False},
                     "year": {"type": "integer", "minimum": 1450, "maximum": 2025}},
      "required": ["title", "author", "year"], "additionalProperties": False}),
    ("three fruits",
     {"type": "object",
      "properties": {"fruits": {"type": "array", "items": NAME, "minItems": 3, "maxItems": 3}},
      "required": ["fruits"], "additionalProperties": False}),
    ("the weather today",
     {"type": "object",
      "properties": {"sky": {"enum": ["sunny", "cloudy", "rainy", "snowy"]},
                     "temperature_c": {"type": "integer", "minimum": -40, "maximum": 50}},
      "required": ["sky", "temperature_c"], "additionalProperties": False}),
    ("a product with a SKU like AB-1234",
     {"type": "object",
      "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4}$"},
                     "price": {"type": "number", "minimum": 0, "maximum": 10000},
                     "in_stock": {"type": "boolean"}},
      "required": ["sku", "price", "in_stock"], "additionalProperties": False}),
    ("a user profile; the nickname is optional",
     {"type": "object",
      "properties": {"email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.com$"},
                     "nickname": NAME,
                     "role": {"enum": ["admin", "editor", "viewer"]}},
      "required": ["email", "role"], "additionalProperties": False}),
    ("a shopping list of 1 to 4 items with quantities",
     {"type": "object",
      "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 4,
                               "items": {"type": "object",
                                         "properties": {"item": NAME,
                                                        "qty": {"type": "integer", "minimum": 1,
                                                                "maximum": 12}},
                                         "required": ["item", "qty"],
                                         "additionalProperties": False}}},
      "required": ["items"], "additionalProperties": False}),
    ("a point in 3D space",
     {"type": "object",
      "properties": {"point": {"type": "array", "items": {"type": "integer", "minimum": -100,
                                                          "maximum": 100},
                               "minItems": 3, "maxItems": 3},
                     "label": {"type": "string", "pattern": "^[A-Z][a-z]{0,9}$"}},
      "required": ["point"], "additionalProperties": False}),
    ("a meeting on a date like 2024-05-17 with 2 to 5 attendees",
     {"type": "object",
      "properties": {"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"},
                     "attendees": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 5},
                     "room": {"type": "integer", "minimum": 100, "maximum": 999}},
      "required": ["date", "attendees"], "additionalProperties": False}),
    ("a company with a nested address and a list of departments",
     {"type": "object",
      "properties": {"company": NAME,
                     "address": {"type": "object",
                                 "properties": {"city": NAME,
                                                "zip": {"type": "string",
                                                        "pattern": "^[0-9]{5}$"}},
                                 "required": ["city", "zip"], "additionalProperties": False},
                     "departments": {"type": "array", "items": {"enum": ["sales", "research",
                                                                         "support", "legal"]},
                                     "minItems": 1, "maxItems": 4}},
      "required": ["company", "address", "departments"], "additionalProperties": False}),
]


def test_ten_schemas_parse_and_validate(smollm2_reference_llm):
    llm = smollm2_reference_llm
    conversations = [[{"role": "user", "content": f"Give me {what} as JSON."}]
                     for what, _ in SCHEMAS]
    params = [SamplingParams(temperature=0.0, max_tokens=160,
                             structured_outputs=StructuredOutputs(json=schema))
              for _, schema in SCHEMAS]
    outputs = llm.chat(conversations, params)
    for (what, schema), out in zip(SCHEMAS, outputs):
        (completion,) = out.outputs
        assert completion.finish_reason == "stop", (what, completion.text)
        jsonschema.validate(json.loads(completion.text), schema)


def test_json_object_and_regex_and_choice(smollm2_reference_llm):
    llm = smollm2_reference_llm
    ask = [[{"role": "user", "content": "Describe a cat as a JSON object."}],
           [{"role": "user", "content": "What is 12 times 12? Answer with the number."}],
           [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]]
    params = [SamplingParams(temperature=0.0, max_tokens=160,
                             structured_outputs=StructuredOutputs(json_object=True)),
              SamplingParams(temperature=0.0, max_tokens=10,
                             structured_outputs=StructuredOutputs(regex=r"[0-9]{1,4}")),
              SamplingParams(temperature=0.0, max_tokens=10,
                             structured_outputs=StructuredOutputs(choice=["yes", "no"]))]
    as_json, number, answer = [out.outputs[0] for out in llm.chat(ask, params)]
    assert as_json.finish_reason == "stop" and isinstance(json.loads(as_json.text), dict)
    assert number.text.isdigit()
    assert answer.text in ("yes", "no")
