"""The llguidance constraint factory: masks, EOS, padding ids, errors, the compiled-grammar cache.

The ``random_walk`` fixture (conftest.py) plays a model that draws uniformly among the tokens the
mask allows: the worst case for a grammar, since no language model keeps it on the likely path.
Whatever it writes must still match.
"""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
from transformers import AutoTokenizer

from jaxserve.engine.constraints import bitmask_words
from jaxserve.pull import resolve_model
from jaxserve.sampling_params import StructuredOutputs
from jaxserve.structured import GrammarBackend, GrammarError

EOS = 2  # the tiny models' eos id


@pytest.fixture(scope="module")
def backend(tiny_tokenizer):
    return GrammarBackend(tiny_tokenizer, len(tiny_tokenizer), (EOS,))


SCHEMA = {"type": "object",
          "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99},
                         "tag": {"enum": ["a", "b"]},
                         "code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]$"}},
          "required": ["id", "tag", "code"], "additionalProperties": False}


def test_json_schema_walks_validate(backend, tiny_tokenizer, random_walk):
    for seed in range(10):
        text, ended = random_walk(backend, StructuredOutputs(json=SCHEMA), tiny_tokenizer, seed)
        assert ended, text
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_walks_parse(backend, tiny_tokenizer, random_walk):
    so = StructuredOutputs(json_object=True)
    for seed in range(5):
        text, ended = random_walk(backend, so, tiny_tokenizer, seed, max_tokens=2000)
        assert ended and isinstance(json.loads(text), dict), text


def test_regex_and_choice_walks_match(backend, tiny_tokenizer, random_walk):
    for seed in range(10):
        text, ended = random_walk(backend, StructuredOutputs(regex=r"[a-c]{2,4}-\d\d"),
                                  tiny_tokenizer, seed)
        assert ended and re.fullmatch(r"[a-c]{2,4}-\d\d", text), text
        text, ended = random_walk(backend, StructuredOutputs(choice=["yes", "no", "maybe"]),
                                  tiny_tokenizer, seed)
        assert ended and text in ("yes", "no", "maybe"), text


def test_lark_grammar_walks_match(backend, tiny_tokenizer, random_walk):
    grammar = 'start: "(" num ("+" num)* ")"\nnum: /[0-9]{1,3}/'
    for seed in range(10):
        text, ended = random_walk(backend, StructuredOutputs(grammar=grammar), tiny_tokenizer,
                                  seed)
        assert ended and re.fullmatch(r"\(\d{1,3}(\+\d{1,3})*\)", text), text


def test_eos_allowed_exactly_when_the_grammar_accepts(backend, tiny_tokenizer, allowed_ids):
    (constraint,) = backend.constraints(StructuredOutputs(regex="ab+"), 1)
    bitmask = np.full((1, bitmask_words(backend.vocab_size)), -1, np.int32)
    constraint.fill_bitmask(bitmask, 0)
    assert EOS not in allowed_ids(bitmask, 0, backend.vocab_size)  # "" does not match
    for token in tiny_tokenizer("ab", add_special_tokens=False).input_ids:
        constraint.accept_token(token)
    constraint.fill_bitmask(bitmask, 0)
    assert EOS in allowed_ids(bitmask, 0, backend.vocab_size)  # "ab" matches, "abb" may follow
    assert not constraint.is_terminated()
    constraint.accept_token(EOS)
    assert constraint.is_terminated()


def test_a_finished_grammar_terminates_without_eos(backend, tiny_tokenizer):
    (constraint,) = backend.constraints(StructuredOutputs(choice=["done"]), 1)
    for token in tiny_tokenizer("done", add_special_tokens=False).input_ids:
        assert not constraint.is_terminated()
        constraint.accept_token(token)
    assert constraint.is_terminated()


def test_padding_ids_of_a_larger_model_vocab_are_never_allowed(allowed_ids):
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny-random-qwen2")))
    vocab = 320  # the model's embedding rows; the tokenizer has fewer
    assert len(tokenizer) < vocab
    backend = GrammarBackend(tokenizer, vocab, (EOS,))
    (constraint,) = backend.constraints(StructuredOutputs(regex="(?s:.*)"), 1)
    bitmask = np.full((2, bitmask_words(vocab)), -1, np.int32)
    constraint.fill_bitmask(bitmask, 1)
    ids = allowed_ids(bitmask, 1, 32 * bitmask.shape[1])
    assert ids.max() < len(tokenizer) and len(ids) > 100
    assert (bitmask[0] == -1).all()  # other rows untouched


def test_a_repeated_schema_compiles_once(tiny_tokenizer):
    backend = GrammarBackend(tiny_tokenizer, len(tiny_tokenizer), (EOS,))
    (first,) = backend.constraints(StructuredOutputs(json=SCHEMA), 1)
    (second,) = backend.constraints(StructuredOutputs(json=json.dumps(SCHEMA)), 1)
    assert backend.compilations == 1
    assert first.matcher is not second.matcher  # each sequence walks its own copy
    token = tiny_tokenizer("{", add_special_tokens=False).input_ids[0]
    first.accept_token(token)
    assert first.matcher.is_error() is False and second.matcher.is_accepting() is False
    backend.constraints(StructuredOutputs(regex="x"), 1)
    assert backend.compilations == 2


@pytest.mark.parametrize("so, field, words", [
    (StructuredOutputs(regex="a(b"), "regex", "unclosed group"),
    (StructuredOutputs(json={"type": "strange"}), "json", "Invalid type"),
    (StructuredOutputs(json="{not json"), "json", "not valid JSON"),
    (StructuredOutputs(json={"type": "array", "minItems": 3, "maxItems": 1}), "json",
     "minItems"),
    (StructuredOutputs(json={"type": "string", "pattern": "(("}), "json", "regex"),
    (StructuredOutputs(grammar="start: missing_rule"), "grammar", "missing_rule"),
])
def test_invalid_constraints_raise_naming_the_field(backend, so, field, words):
    with pytest.raises(GrammarError) as info:
        backend.constraints(so, 1)
    assert info.value.field == field
    assert words in str(info.value) and "\n" not in str(info.value)


def _nested_list(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def _nested_schema(levels: int) -> dict:
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize("so, field", [
    (StructuredOutputs(json=_nested_schema(150)), "json"),
    (StructuredOutputs(json=json.dumps(_nested_schema(150))), "json"),
    (StructuredOutputs(json={"type": "array", "enum": _nested_list(3000)}), "json"),
    (StructuredOutputs(regex="(" * 3000 + "a" + ")" * 3000), "regex"),
    (StructuredOutputs(grammar="start: " + "(" * 3000 + '"a"' + ")" * 3000), "grammar"),
], ids=["schema", "schema-text", "unserialisable", "regex", "lark"])
def test_too_deep_constraints_are_grammar_errors(backend, so, field):
    """llguidance's own recursion limits raised ValueError, a 500 over HTTP."""
    with pytest.raises(GrammarError) as info:
        backend.constraints(so, 1)
    assert info.value.field == field


def test_a_schema_at_the_depth_limit_compiles(backend):
    backend.constraints(StructuredOutputs(json=_nested_schema(59)), 1)  # 119 JSON levels
